"""``latentmas check-model``: prove the latent mechanics on a model before spending GPU hours on it.

Three checks, each a measured number against a tolerance:

1. **KV hand-off**: agent A reads a prompt and thinks m latent steps; agent B reads its prompt on top of A's cache.
   B's logits must equal one forward over the concatenated input embeddings (A's prompt embeddings + A's latent
   vectors + B's prompt): max |Δ| ≤ rtol · max |logit| and the same argmax at every position.
2. **Batch invariance**: the same rollout + hand-off for prompts of different lengths in one left-padded batch must
   match each prompt run alone (same tolerance, same argmax; greedy continuations identical).
3. **W_a optimality**: the ridge normal equations hold: ‖W_outᵀ(W_out W_a − W_in) + λ W_a‖ / ‖W_outᵀ W_in‖ ≤ tol.

``--inject-fault positions`` shifts the position ids of the hand-off by one (a classic cache bug); the check must
then fail, which is how we know it can.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from latentmas.engine.kv import SequenceBatch, _cache_kwarg, extend, left_pad
from latentmas.engine.latent import LatentMapper
from latentmas.engine.models import LoadedModel, dtype_name, encode, render_chat

PROMPTS_A = [
    "Natalia sold clips to 48 friends in April, and half as many in May. How many clips did she sell?",
    "Plan briefly: 3 apples + 4 apples?",
    "A train leaves at 3 pm going 60 km/h; another leaves an hour later at 80 km/h on the same track. "
    "When does the second catch up with the first? Think about relative speed and the head start carefully.",
]
PROMPTS_B = ["Review the plan above.", "Check every step of the reasoning and fix mistakes.", "Give the answer."]


@dataclass
class CheckResult:
    name: str
    passed: bool
    max_abs_diff: float
    scale: float
    detail: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _ids(lm: LoadedModel, text: str) -> list[int]:
    return encode(lm.tokenizer, render_chat(lm.tokenizer, [{"role": "user", "content": text}]))


def handoff_logits(lm: LoadedModel, mapper: LatentMapper, prompt_a: list[int], prompt_b: list[int], steps: int,
                   position_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of B on A's handed-over cache, logits of one forward over the concatenated embeddings) for B's tokens."""
    model = lm.model
    batch = SequenceBatch.empty(model, 1, lm.device)
    ids, mask = left_pad([prompt_a], lm.pad_token_id, lm.device)
    hidden = extend(model, batch, mask, input_ids=ids, agent="a")
    latents = []
    for _ in range(steps):
        vec, _ = mapper(hidden)
        latents.append(vec)
        hidden = extend(model, batch, torch.ones(1, 1, dtype=torch.long, device=lm.device),
                        inputs_embeds=vec[:, None, :], agent="a", kind="latent")
    ids_b, mask_b = left_pad([prompt_b], lm.pad_token_id, lm.device)
    pos = batch.next_position[:, None] + torch.arange(ids_b.shape[1], device=lm.device)[None] + position_shift
    with torch.no_grad():
        out = model(input_ids=ids_b, attention_mask=torch.cat([batch.attention_mask, mask_b], 1), position_ids=pos,
                    use_cache=True, **{_cache_kwarg(model): batch.cache})
        emb = model.get_input_embeddings()
        full = torch.cat([emb(ids)] + [v[:, None, :] for v in latents] + [emb(ids_b)], dim=1)
        ref = model(inputs_embeds=full).logits[:, -ids_b.shape[1]:]
    return out.logits[0].float(), ref[0].float()


def _compare(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float, extra: str = "") -> CheckResult:
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    same_argmax = bool((got.argmax(-1) == ref.argmax(-1)).all())
    passed = diff <= rtol * scale and same_argmax
    detail = f"max|Δ|={diff:.3g} ≤ {rtol:g}×{scale:.3g}? {diff <= rtol * scale}; same argmax: {same_argmax}{extra}"
    return CheckResult(name, passed, diff, scale, detail)


def check_handoff(lm: LoadedModel, mapper: LatentMapper, steps: int = 10, rtol: float = 1e-4,
                  position_shift: int = 0) -> CheckResult:
    worst = None
    for a, b in zip(PROMPTS_A, PROMPTS_B):
        got, ref = handoff_logits(lm, mapper, _ids(lm, a), _ids(lm, b), steps, position_shift)
        res = _compare("kv_handoff", got, ref, rtol)
        if worst is None or (not res.passed) or res.max_abs_diff / max(res.scale, 1e-30) > \
                worst.max_abs_diff / max(worst.scale, 1e-30):
            worst = res
        if not res.passed:
            break
    return worst


def _rollout_then_b(lm: LoadedModel, mapper: LatentMapper, idx: list[int], steps: int) -> torch.Tensor:
    from latentmas.engine.latent import latent_rollout

    batch = SequenceBatch.empty(lm.model, len(idx), lm.device)
    ids, mask = left_pad([_ids(lm, PROMPTS_A[i]) for i in idx], lm.pad_token_id, lm.device)
    hidden = extend(lm.model, batch, mask, input_ids=ids, agent="a")
    latent_rollout(lm.model, batch, hidden, steps, mapper, "a")
    ids_b, mask_b = left_pad([_ids(lm, PROMPTS_B[i]) for i in idx], lm.pad_token_id, lm.device)
    return extend(lm.model, batch, mask_b, input_ids=ids_b, want="logits", agent="b").float()


def check_batch_invariance(lm: LoadedModel, mapper: LatentMapper, steps: int = 10, rtol: float = 2e-3) -> CheckResult:
    """Batched vs alone. The tolerance is looser than the hand-off's: a different batch shape legitimately changes
    floating-point reduction order (measured on Qwen2.5-Coder-0.5B fp32 CPU: up to 1.1e-4 relative after 5 latent
    steps in an exploratory run, 6e-6 in check-model), while a padding bug (reading a PAD position, wrong positions) gives O(1) differences and flips the argmax."""
    idx = list(range(len(PROMPTS_A)))
    batched = _rollout_then_b(lm, mapper, idx, steps)
    alone = torch.cat([_rollout_then_b(lm, mapper, [i], steps) for i in idx])
    return _compare("batch_invariance", batched, alone, rtol, f"; prompts of {len(idx)} different lengths")


def _alignment_matrices(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_out, W_in) in float64 as W_a was solved for: from the weight files when they can be read (so a bf16 model
    is checked against the weights W_a came from, not their bf16 rounding), else from the loaded model."""
    from latentmas.engine.alignment import _effective_input_embeddings, _output_matrix
    from latentmas.engine.weight_files import WeightFileError, locate

    try:
        src = locate(lm.path)
        return (src.head_rows(0, src.vocab).to(lm.device).double(),
                src.effective_embedding_rows(0, src.vocab).to(lm.device).double())
    except (WeightFileError, OSError):
        wo = _output_matrix(lm.model).double()
        return wo, _effective_input_embeddings(lm.model, slice(0, wo.shape[0])).double()


def check_alignment(lm: LoadedModel, al, tol: float = 1e-4) -> CheckResult:
    with torch.no_grad():
        wo, wi = _alignment_matrices(lm)
        w = al.w_a.double().to(wo.device)
        grad = wo.T @ (wo @ w - wi) + al.ridge_lambda * w
        rhs = wo.T @ wi
    resid = float(grad.norm() / rhs.norm())
    return CheckResult("w_a_normal_equations", resid <= tol, resid, 1.0,
                       f"relative residual of the ridge normal equations {resid:.3g} ≤ {tol:g}")


def run_checks(lm: LoadedModel, steps: int = 10, rtol: float = 1e-4, fault: str | None = None,
               ridge_lambda: float = 1e-5, batch_rtol: float = 2e-3, align_file: str | None = None) -> list[CheckResult]:
    from latentmas.engine.alignment import load_or_compute

    # never computed in-process (see compute_alignment_isolated); a matching align_file is reused
    al = load_or_compute(lm.model, align_file, ridge_lambda, model_path=lm.path)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    shift = 1 if fault == "positions" else 0
    # check_alignment's float64 products come last: they must not precede the float32 checks (see
    # compute_alignment_isolated)
    return [check_handoff(lm, mapper, steps, rtol, shift), check_batch_invariance(lm, mapper, steps, batch_rtol),
            check_alignment(lm, al)]


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="latentmas check-model", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model folder or Hub id")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rtol", type=float, default=1e-4, help="hand-off tolerance, relative to max |logit|")
    ap.add_argument("--batch-rtol", type=float, default=2e-3, help="batched-vs-alone tolerance (see docs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32",
                    help="compute dtype of the checked model (float32 is the exactness reference; bfloat16 measures "
                         "what a bf16 run deviates by — loosen --rtol/--batch-rtol accordingly, see docs/ENGINE.md)")
    ap.add_argument("--chat-template", default=None)
    ap.add_argument("--align-file", default=None, help="cached W_a file (reused if it matches, else written)")
    ap.add_argument("--inject-fault", choices=["positions"], default=None,
                    help="deliberately break the hand-off to show the check catches it")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    from latentmas.contracts import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
    from latentmas.engine.models import ModelLoadError, load_model

    try:
        lm = load_model(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template)
    except ModelLoadError as exc:
        print(f"latentmas check-model: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results = run_checks(lm, args.steps, args.rtol, args.inject_fault, batch_rtol=args.batch_rtol,
                         align_file=args.align_file)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        dtype = dtype_name(lm.dtype)
        print(f"check-model {args.model} ({dtype}, {lm.device}, {torch.get_num_threads()} threads, "
              f"{args.steps} latent steps)")
        for r in results:
            print(f"  {'PASS' if r.passed else 'FAIL'}  {r.name:22s} {r.detail}")
    ok = all(r.passed for r in results)
    if not ok:
        print("check-model: FAILED — do not trust latent_mas results on this setup", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILURE
