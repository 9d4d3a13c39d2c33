"""W_a: the training-free map from output hidden states back to the input-embedding space.

A last-layer hidden state h is what ``lm_head`` reads; an input embedding is what layer 0 reads. LatentMAS maps one
onto the other with the ridge solution of ``W_out · W_a ≈ W_in``:

    W_a = (W_outᵀ W_out + λ I)⁻¹ W_outᵀ W_in          (W_out = lm_head weight [V, d], W_in = input embeddings [V, d])

so that ``h · W_a`` is the embedding-space point whose "vocabulary reading" matches h's. Then the vector is rescaled to
the mean norm of the embeddings the model actually sees (``target_norm``).

Details that matter for exactness:
* float64 accumulation (chunked over the vocabulary: V·d² work, d² memory) — the Gram matrix of a 150k-row lm_head is
  badly conditioned in float32;
* untied lm_head (Qwen2.5 GGUFs) is just a different W_out; tied models give W_out = W_in;
* embedding scaling: Gemma-3 multiplies embeddings by √d *inside* its embedding layer, so W_in and the target norm are
  taken from the embedding layer's output, not its weight;
* W_a depends only on those two matrices, so it is cached in a file keyed by a fingerprint of exactly them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_RIDGE_LAMBDA = 1e-5
_CHUNK_ROWS = 16384


@dataclass
class Alignment:
    w_a: torch.Tensor  # [d, d] float32
    target_norm: float
    fingerprint: str
    ridge_lambda: float

    def to(self, device, dtype) -> "Alignment":
        return Alignment(self.w_a.to(device=device, dtype=dtype), self.target_norm, self.fingerprint, self.ridge_lambda)


def _effective_input_embeddings(model, rows: slice) -> torch.Tensor:
    """Rows of what the embedding layer outputs (includes any scaling done inside the layer)."""
    emb = model.get_input_embeddings()
    ids = torch.arange(rows.start, rows.stop, device=emb.weight.device)
    with torch.no_grad():
        return emb(ids)


def _output_matrix(model) -> torch.Tensor:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head); it is not a causal LM")
    return head.weight


_FINGERPRINT_ROWS = 2048


def fingerprint_rows(vocab: int) -> list[int]:
    """Evenly spaced row indices (first and last included) that the weight fingerprint hashes."""
    n = min(vocab, _FINGERPRINT_ROWS)
    return sorted({round(i * (vocab - 1) / max(n - 1, 1)) for i in range(n)})


def _fingerprint(emb_rows: torch.Tensor, head_rows: torch.Tensor, emb_shape, head_shape, scale: float,
                 tied: bool) -> str:
    """sha256 over the shapes and a row sample of both matrices, rounded to bf16 (so the same weights loaded in fp32
    or bf16 key the same file), plus the embedding scale and tying. A sample, not every row: hashing all of a 150k
    vocabulary costs seconds per load, and checkpoints that differ in these matrices differ in nearly every row."""
    h = hashlib.sha256(b"latentmas-w_a-fingerprint-2")
    for shape, rows in ((emb_shape, emb_rows), (head_shape, head_rows)):
        h.update(str(tuple(shape)).encode())
        h.update(rows.detach().to("cpu", torch.bfloat16).contiguous().view(torch.uint8).numpy().tobytes())
    h.update(f"embed_scale={scale:.6g};tied={tied}".encode())
    return h.hexdigest()


def _scale_ratio(probe_row: torch.Tensor, raw_row: torch.Tensor) -> float:
    raw_norm = float(raw_row.float().norm())
    return float(probe_row.float().norm()) / raw_norm if raw_norm > 0 else 1.0


def weight_fingerprint(model) -> str:
    """Fingerprint of the effective input-embedding map and lm_head of a loaded model (what W_a depends on)."""
    emb_w = model.get_input_embeddings().weight
    out_w = _output_matrix(model)
    idx = fingerprint_rows(emb_w.shape[0])
    sel = torch.tensor(idx, device=emb_w.device)
    out_sel = torch.tensor(fingerprint_rows(out_w.shape[0]), device=out_w.device)
    probe = _effective_input_embeddings(model, slice(0, 1))
    return _fingerprint(emb_w.detach().index_select(0, sel), out_w.detach().index_select(0, out_sel),
                        emb_w.shape, out_w.shape, _scale_ratio(probe, emb_w[:1].detach()),
                        emb_w.data_ptr() == out_w.data_ptr())


def file_fingerprint(src) -> str:
    """The same fingerprint from the weight files (``weight_files.EmbeddingAndHead``): equal to
    :func:`weight_fingerprint` of the loaded model."""
    raw0 = src.raw_embedding_rows(0, 1)
    return _fingerprint(src.sampled_rows("embed", fingerprint_rows(src.vocab)),
                        src.sampled_rows("head", fingerprint_rows(src.vocab)), (src.vocab, src.d), (src.vocab, src.d),
                        _scale_ratio(raw0.to(torch.float32) * src.scale, raw0), src.tied)


def target_norm(model) -> float:
    """Mean L2 norm of the input embeddings as the first layer sees them."""
    vocab = model.get_input_embeddings().weight.shape[0]
    total = 0.0
    for start in range(0, vocab, _CHUNK_ROWS):
        rows = _effective_input_embeddings(model, slice(start, min(vocab, start + _CHUNK_ROWS)))
        total += float(rows.double().norm(dim=-1).sum())
    return total / vocab


def compute_alignment(model, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA) -> Alignment:
    """Solve the ridge system in float64 on the model's device (chunked Gram accumulation)."""
    out_w = _output_matrix(model)
    vocab, d = out_w.shape
    dev = out_w.device
    acc_dtype = _acc_dtype(dev)
    gram = torch.zeros(d, d, dtype=acc_dtype, device=dev)
    cross = torch.zeros(d, d, dtype=acc_dtype, device=dev)
    norm_sum = 0.0
    from latentmas.progress import bar

    with torch.no_grad():
        for start in bar(range(0, vocab, _CHUNK_ROWS), desc="W_a: vocabulary chunks", unit="chunk"):
            sl = slice(start, min(vocab, start + _CHUNK_ROWS))
            wo = out_w[sl].to(acc_dtype)
            wi = _effective_input_embeddings(model, sl).to(acc_dtype)
            gram += wo.T @ wo
            cross += wo.T @ wi
            norm_sum += float(wi.norm(dim=-1).sum())
        w_a = _solve(gram, cross, ridge_lambda)
    return Alignment(
        w_a=w_a.to(torch.float32).cpu(),
        target_norm=norm_sum / vocab,
        fingerprint=weight_fingerprint(model),
        ridge_lambda=float(ridge_lambda),
    )


def _acc_dtype(dev: torch.device) -> torch.dtype:
    return torch.float64 if dev.type != "mps" else torch.float32


def _solve(gram: torch.Tensor, cross: torch.Tensor, ridge_lambda: float) -> torch.Tensor:
    d = gram.shape[0]
    gram = gram + ridge_lambda * torch.eye(d, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, cross)


def compute_alignment_from_files(model_dir: str | Path, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
                                 device: str = "auto", src=None) -> Alignment:
    """W_a from the embedding and head tensors in the weight files, without loading the model: chunks of rows are
    read from safetensors, moved to ``device`` and accumulated in float64 (the Gram matrix of a large head is badly
    conditioned in float32). The arithmetic per chunk is the one :func:`compute_alignment` does on a float32 model."""
    from latentmas.engine.models import resolve_device
    from latentmas.engine.weight_files import locate

    src = src or locate(model_dir)
    dev = resolve_device(device)
    acc = _acc_dtype(dev)
    scale = src.scale.to(dev)
    gram = torch.zeros(src.d, src.d, dtype=acc, device=dev)
    cross = torch.zeros(src.d, src.d, dtype=acc, device=dev)
    norm_sum = 0.0
    for start in range(0, src.vocab, _CHUNK_ROWS):
        stop = min(src.vocab, start + _CHUNK_ROWS)
        wo = src.head_rows(start, stop).to(dev).to(acc)
        wi = (src.raw_embedding_rows(start, stop).to(dev).to(torch.float32) * scale).to(acc)
        gram += wo.T @ wo
        cross += wo.T @ wi
        norm_sum += float(wi.norm(dim=-1).sum())
    w_a = _solve(gram, cross, ridge_lambda)
    return Alignment(w_a=w_a.to(torch.float32).cpu(), target_norm=norm_sum / src.vocab,
                     fingerprint=file_fingerprint(src), ridge_lambda=float(ridge_lambda))


def save_alignment(al: Alignment, path: str | Path) -> None:
    from safetensors.torch import save_file

    from latentmas.records import atomic_path

    meta = {"target_norm": repr(al.target_norm), "fingerprint": al.fingerprint, "ridge_lambda": repr(al.ridge_lambda),
            "format": "latentmas-alignment-1"}
    with atomic_path(path) as tmp:
        save_file({"w_a": al.w_a.contiguous()}, str(tmp), metadata=meta)


def load_alignment(path: str | Path) -> Alignment:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        w_a = f.get_tensor("w_a")
    return Alignment(w_a=w_a, target_norm=float(meta["target_norm"]), fingerprint=meta["fingerprint"],
                     ridge_lambda=float(meta["ridge_lambda"]))


def compute_alignment_isolated(model_path: str, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
                               device: str = "auto") -> Alignment:
    """Compute W_a in a fresh process (``latentmas align``) and load the result.

    The child reads only the embedding and head tensors from the weight files (no model load; see
    :func:`compute_alignment_from_files`). Why a child at all: on the CPU, one large float64 GEMM leaves process-wide BLAS state behind that changes the rounding of later
    float32 work. Measured on Qwen2.5-Coder-0.5B: after an in-process W_a solve, a cached continuation's logits were
    0.015 from a float64 reference instead of 3.7e-4. Inference and checks must not depend on whether W_a happened
    to be computed in the same process, so it never is.
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="latentmas-align-") as tmp:
        out = Path(tmp) / "w_a.safetensors"
        cmd = [sys.executable, "-m", "latentmas.cli", "align", "--model", str(model_path), "--device", device,
               "--ridge-lambda", repr(float(ridge_lambda)), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"computing W_a for {model_path} failed:\n{proc.stderr[-2000:]}")
        return load_alignment(out)


def load_or_compute(model, path: str | Path | None, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
                    model_path: str | None = None) -> Alignment:
    """Reuse the file when it belongs to these weights and this λ; otherwise compute (and save when a path is given).

    With ``model_path`` the computation runs in a fresh process (see :func:`compute_alignment_isolated`), so the
    caller's later float32 numerics are the same whether or not W_a was cached.
    """
    fp = None
    if path is not None and Path(path).exists():
        al = load_alignment(path)
        fp = weight_fingerprint(model)
        if al.fingerprint == fp and al.ridge_lambda == float(ridge_lambda):
            log.info("W_a loaded from %s", path)
            return al
        log.warning("%s belongs to other weights or λ (fingerprint/λ differ); recomputing", path)
    if model_path is not None:
        al = compute_alignment_isolated(model_path, ridge_lambda, str(_output_matrix(model).device))
        fp = fp or weight_fingerprint(model)
        if al.fingerprint != fp:
            raise RuntimeError(f"W_a computed from {model_path} does not match the loaded weights' fingerprint")
    else:
        al = compute_alignment(model, ridge_lambda)
    if path is not None:
        save_alignment(al, path)
    return al


def _peak_mem_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _align_from_files(model_dir: str, out: str, ridge_lambda: float, device: str) -> Alignment | None:
    """Reuse ``out`` when its fingerprint and λ match the weight files, else compute from them and save; None when
    the files cannot be read this way (the caller then loads the model)."""
    from latentmas.engine.weight_files import WeightFileError, locate

    try:
        src = locate(model_dir)
        if Path(out).exists():
            al = load_alignment(out)
            if al.fingerprint == file_fingerprint(src) and al.ridge_lambda == float(ridge_lambda):
                log.info("W_a in %s matches the weight files; reused", out)
                return al
            log.warning("%s belongs to other weights or λ; recomputing", out)
        al = compute_alignment_from_files(model_dir, ridge_lambda, device, src=src)
    except WeightFileError as exc:
        log.warning("cannot read the embedding/head from the weight files (%s); loading the model", exc)
        return None
    save_alignment(al, out)
    return al


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="latentmas align", description="Compute and cache W_a and the target norm.")
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--ridge-lambda", type=float, default=DEFAULT_RIDGE_LAMBDA)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--from-model", action="store_true",
                    help="load the whole model instead of reading only the embedding/head tensors (non-safetensors "
                         "checkpoints, or embedding layers that are not a scaled lookup)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import time

    from latentmas.contracts import EXIT_BAD_INPUT
    from latentmas.engine.models import ModelLoadError, load_model, resolve_device

    t0 = time.perf_counter()
    al = None if args.from_model else _align_from_files(args.model, args.out, args.ridge_lambda, args.device)
    source = "weight-files"
    if al is None:
        source = "model"
        try:
            lm = load_model(args.model, dtype="float32", device=args.device, attn_implementation=None,
                            require_chat_template=False, linear_kernel="aten")  # no forward: nothing to pack
        except ModelLoadError as err:
            print(f"latentmas align: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        al = load_or_compute(lm.model, args.out, args.ridge_lambda)
    dev = resolve_device(args.device)
    print(json.dumps({"out": args.out, "target_norm": al.target_norm, "fingerprint": al.fingerprint,
                      "ridge_lambda": al.ridge_lambda, "d": al.w_a.shape[0], "source": source,
                      "compute_s": round(time.perf_counter() - t0, 3), "peak_mem_mb": round(_peak_mem_mb(dev), 1)}))
    return 0
