"""The latent lens: what each latent thought would say, and whether it is still a sane vector.

A latent step feeds back the last-layer hidden state instead of a token, so nothing is left to read. The lens reads
it anyway, per step of every agent, through the model's own weights:

* **logit lens** on the hidden state *before* the map — ``hidden`` is ``model.base_model``'s ``last_hidden_state``,
  which already went through the final norm, i.e. exactly the vector the LM head reads when the model decodes a
  token. So ``logits = lm_head(hidden)`` (plus the model's final logit soft-cap if its config has one); applying the
  final norm again would read a vector the head never sees. Top-k tokens, their probabilities and the entropy.
* **nearest input embeddings** (cosine) of the vector actually fed back (``vec``: mapped by W_a or identity,
  rescaled): which tokens' embeddings the next step receives something like.
* norms: ``||hidden||`` before the map and ``||map(hidden)||`` after it (before the rescale; the rollout's
  ``norms``), their ratio; cosine to the previous step's hidden state; **drift** ``1 - cos(hidden_t, hidden_0)``
  from the prompt's last hidden state (step 0's hidden state is that state).

Stored per agent in the record (``agents[i].latent.lens``) column-wise, at the level ``trace`` asks for:
``summary`` (default; top-3 lens tokens, nearest token, scalars rounded), ``full`` (top-10, 5 nearest, token ids),
``none`` (no observer at all: the rollout does no extra work). Health ranges are :data:`SANE`; steps outside them
are listed per agent in ``lens.flags`` (kinds ``nonfinite``, ``norm``, ``entropy``, and ``collapse``: the lens
reads the model's end-of-turn/EOS token as the likely next token, i.e. the thought has collapsed to "stop") and logged as one warning per agent and kind naming the first step.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

TRACE_LEVELS = ("none", "summary", "full")
DEFAULT_TRACE = "summary"


@dataclass(frozen=True)
class LensLevel:
    top_k: int
    nearest: int
    ids: bool  # keep token ids (full) besides the decoded strings


LEVELS = {"summary": LensLevel(3, 1, False), "full": LensLevel(10, 5, True)}


@dataclass(frozen=True)
class SaneRange:
    """When a latent step looks broken. Relative to the agent's own prompt state, so it holds for any model size."""

    norm_growth: tuple[float, float] = (0.25, 4.0)  # ||hidden_t|| / ||hidden_0|| (hidden_0: prompt's last state)
    max_entropy_frac: float = 0.95  # lens entropy / log(vocab): near 1 = uniform, the head reads nothing
    collapse_p: float = 0.5  # lens top-1 is a stop token (end of turn / EOS) at least this likely: the thought
    #                          reads "stop talking" rather than content (seen on the demo model's judger steps)


SANE = SaneRange()
DIGITS = 4


def _r(x: float) -> float | None:
    return round(float(x), DIGITS) if math.isfinite(float(x)) else None


class LatentLens:
    """One per loaded model: the head, the input-embedding matrix and its row norms (no normalized copy: [V] only)."""

    def __init__(self, model, tokenizer, level: str = DEFAULT_TRACE, stop_ids=()):
        if level not in LEVELS:
            raise ValueError(f"trace level {level!r} has no lens; use one of {', '.join(LEVELS)}")
        self.level = LEVELS[level]
        self.head = model.get_output_embeddings()
        self.emb = model.get_input_embeddings().weight  # [V_in, d]
        self.emb_norm = self.emb.float().norm(dim=-1).clamp_min(1e-12)  # [V_in]
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(int(t) for t in stop_ids)  # the model's end-of-turn / EOS ids (collapse flag)
        self._token_cache: dict[int, str] = {}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, d] final-norm hidden state → [B, V] float32 logits, as the model's own head computes them."""
        with torch.no_grad():
            out = self.head(hidden.to(self.head.weight.dtype)).float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def nearest(self, vec: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, d] → cosine of the k nearest input embeddings [B, k] and their ids [B, k]."""
        with torch.no_grad():
            dots = vec.to(self.emb.dtype) @ self.emb.T  # [B, V_in]
            cos = dots.float() / (self.emb_norm[None, :] * vec.float().norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return cos.topk(k, dim=-1)

    def token(self, tid: int) -> str:
        if tid not in self._token_cache:
            self._token_cache[tid] = self.tokenizer.decode([tid])
        return self._token_cache[tid]

    def recorder(self, batch_size: int, agent: str) -> "AgentLens":
        return AgentLens(self, batch_size, agent)


class AgentLens:
    """The observer for one agent's rollout over one batch: ``observer(step, hidden, vec)``, then :meth:`finish`."""

    def __init__(self, lens: LatentLens, batch_size: int, agent: str):
        self.lens, self.agent, self.bsz = lens, agent, batch_size
        self.steps: list[dict] = []  # per step: small CPU tensors
        self._first: torch.Tensor | None = None
        self._prev: torch.Tensor | None = None
        self.seconds = 0.0  # time spent in the lens, excluded from the agent's wall_s (speed tables stay fair)

    def __call__(self, step: int, hidden: torch.Tensor, vec: torch.Tensor) -> None:
        if hidden.is_cuda:  # the previous step's forward is the rollout's time, not the lens's
            torch.cuda.synchronize(hidden.device)
        t0 = time.perf_counter()
        self._observe(hidden, vec)
        self.seconds += time.perf_counter() - t0

    def _observe(self, hidden: torch.Tensor, vec: torch.Tensor) -> None:
        lv = self.lens.level
        h = hidden.float()  # [B, d]
        logits = self.lens.logits(hidden)  # [B, V]
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)  # [B] nats
        top_lp, top_id = logp.topk(lv.top_k, dim=-1)  # [B, k]
        near_cos, near_id = self.lens.nearest(vec, lv.nearest)
        if self._first is None:
            self._first = h
        cos_first = torch.nn.functional.cosine_similarity(h, self._first, dim=-1)
        cos_prev = None if self._prev is None else torch.nn.functional.cosine_similarity(h, self._prev, dim=-1)
        self._prev = h
        self.steps.append({
            "norm_h": h.norm(dim=-1).cpu(), "entropy": entropy.cpu(), "top_p": top_lp.exp().cpu(),
            "top_id": top_id.cpu(), "near_cos": near_cos.cpu(), "near_id": near_id.cpu(),
            "drift": (1.0 - cos_first).cpu(), "cos_prev": None if cos_prev is None else cos_prev.cpu(),
            "log_vocab": math.log(logits.shape[-1]),
        })

    def finish(self, norms_after: list[list[float]]) -> list[dict]:
        """Per sample: the agent's lens columns (``norms_after``: the rollout's per-sample mapped norms)."""
        t0 = time.perf_counter()
        out = [self._sample(b, norms_after[b]) for b in range(self.bsz)]
        self._warn(out)
        self.seconds += time.perf_counter() - t0
        return out

    def _sample(self, b: int, after: list[float]) -> dict:
        lv, tok = self.lens.level, self.lens.token
        s = self.steps
        norm_h = [float(x["norm_h"][b]) for x in s]
        col = {
            "top": [[tok(int(t)) for t in x["top_id"][b]] for x in s],
            "top_p": [[_r(p) for p in x["top_p"][b]] for x in s],
            "near": [[tok(int(t)) for t in x["near_id"][b]] for x in s],
            "near_cos": [[_r(c) for c in x["near_cos"][b]] for x in s],
            "norm_h": [_r(v) for v in norm_h],
            "ratio": [_r(a / h) if h > 0 else None for a, h in zip(after, norm_h)],
            "cos_prev": [None if x["cos_prev"] is None else _r(x["cos_prev"][b]) for x in s],
            "drift": [_r(x["drift"][b]) for x in s],
            "entropy": [_r(x["entropy"][b]) for x in s],
        }
        if lv.ids:
            col["top_id"] = [[int(t) for t in x["top_id"][b]] for x in s]
            col["near_id"] = [[int(t) for t in x["near_id"][b]] for x in s]
        col["log_vocab"] = _r(s[0]["log_vocab"]) if s else None
        collapsed = [t for t, x in enumerate(s) if int(x["top_id"][b][0]) in self.lens.stop_ids
                     and float(x["top_p"][b][0]) >= SANE.collapse_p]
        col["flags"] = sorted(step_flags(col) + [{"step": t, "kind": "collapse"} for t in collapsed],
                              key=lambda f: f["step"])
        return col

    def _warn(self, per_sample: list[dict]) -> None:
        for kind in _RANGE_TEXT:
            hits = [(b, f["step"]) for b, col in enumerate(per_sample) for f in col["flags"] if f["kind"] == kind]
            if hits:
                first = min(step for _, step in hits)
                n = len({b for b, _ in hits})
                log.warning("latent health: agent %s step %d: %s out of the sane range in %d/%d samples (%s)",
                            self.agent, first, kind, n, self.bsz, _RANGE_TEXT[kind])


_RANGE_TEXT = {
    "nonfinite": "non-finite hidden state",
    "norm": f"||h_t||/||h_0|| outside {SANE.norm_growth[0]}..{SANE.norm_growth[1]}",
    "entropy": f"lens entropy > {SANE.max_entropy_frac} of log(vocab)",
    "collapse": f"lens top-1 is an end-of-turn/EOS token with p >= {SANE.collapse_p}",
}


def step_flags(col: dict, sane: SaneRange = SANE) -> list[dict]:
    """Steps of one agent's lens columns that leave the sane range: [{"step", "kind"}]."""
    flags = []
    norms = col["norm_h"]
    base = norms[0] if norms and norms[0] else None
    for t, n in enumerate(norms):
        if n is None or col["entropy"][t] is None:
            flags.append({"step": t, "kind": "nonfinite"})
            continue
        if base and not sane.norm_growth[0] <= n / base <= sane.norm_growth[1]:
            flags.append({"step": t, "kind": "norm"})
        if col.get("log_vocab") and col["entropy"][t] / col["log_vocab"] > sane.max_entropy_frac:
            flags.append({"step": t, "kind": "entropy"})
    return flags


def trace_bytes_per_sample(records: list[dict]) -> float:
    """Mean bytes a trace adds to one record (JSON of every ``latent.lens``, the ``prompt`` strings and ``question``):
    for ``latentmas bench`` to report the cost of ``summary`` (records of ``trace: none`` give 0)."""
    if not records:
        return 0.0

    def size(x) -> int:
        return 0 if x is None else len(json.dumps(x, ensure_ascii=False).encode("utf-8"))

    return sum(size(r.get("question")) + sum(size((a.get("latent") or {}).get("lens")) + size(a.get("prompt"))
                                             for a in r.get("agents", []))
               for r in records) / len(records)
