"""The latent rollout: an agent thinks for m steps without sampling a token.

Each step takes the final-norm hidden state at the sample's last real position, maps it into input-embedding space
(W_a when realignment is on, identity when off), rescales it to the mean input-embedding norm the model sees, and
feeds it back as ``inputs_embeds`` on the shared cache. Steps are batched; one column is appended per step for every
sample, so all samples stay aligned and none ever reads a PAD position.

Numerical faults are caught at the step they appear: a non-finite mapped vector marks that sample failed (with the
agent and step) and its later steps are fed a zero vector so the other samples of the batch carry on untouched.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentmas.engine.kv import SequenceBatch, extend


class LatentMapper:
    """h → (h · W_a or h) → rescaled to ``target_norm``; one device matmul per step.

    ``matmul_dtype`` is the dtype W_a is applied in (default float32 whatever the model dtype; the measured error of
    the compute dtype instead is in docs/ENGINE.md). The norm and rescale are always float32; the fed vector is cast
    to the model dtype at the end.
    """

    def __init__(self, target_norm: float, w_a: torch.Tensor | None, device: torch.device, dtype: torch.dtype,
                 matmul_dtype: torch.dtype = torch.float32):
        self.target_norm = float(target_norm)
        self.matmul_dtype = matmul_dtype
        self.w_a = None if w_a is None else w_a.to(device=device, dtype=matmul_dtype).contiguous()  # [d, d]
        self.dtype = dtype

    def __call__(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, d] → (fed vector [B, d] in the model dtype, norm before rescaling [B] float32)."""
        if self.w_a is not None:
            x = (hidden.to(self.matmul_dtype) @ self.w_a).to(torch.float32)
        else:
            x = hidden.to(torch.float32)
        norms = x.norm(dim=-1)
        scaled = x * (self.target_norm / norms.clamp_min(1e-12))[:, None]
        return scaled.to(self.dtype), norms


@dataclass
class RolloutTrace:
    norms: list[list[float]] = field(default_factory=list)  # per sample, per step: norm of the mapped vector
    failed_at: list[int | None] = field(default_factory=list)  # per sample: first non-finite step, or None


def latent_rollout(model, batch: SequenceBatch, hidden: torch.Tensor, steps: int, mapper: LatentMapper,
                   agent: str, alive: torch.Tensor | None = None,
                   observer: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                   ) -> tuple[torch.Tensor, RolloutTrace]:
    """Run ``steps`` latent steps from ``hidden`` ([B, d]); return the last hidden state and a per-sample trace.

    The per-step bookkeeping (norms, first non-finite step) stays on the device and is copied to the host once at
    the end: a step costs its forward and no host synchronisation. ``observer(step, hidden, vec)``, when given, is
    called once per step with the state that was mapped ([B, d]) and the vector fed back ([B, d], mapped, rescaled,
    zeroed for failed samples); without one nothing is added to the step.
    """
    bsz = hidden.shape[0]
    device = hidden.device
    ok = torch.ones(bsz, dtype=torch.bool, device=device) if alive is None else alive.to(device).clone()
    failed_at = torch.full((bsz,), -1, dtype=torch.long, device=device)
    norms = torch.empty(bsz, steps, dtype=torch.float32, device=device)  # [B, steps]
    ones = torch.ones(bsz, 1, dtype=torch.long, device=device)
    for step in range(steps):
        vec, norms[:, step] = mapper(hidden)
        finite = torch.isfinite(vec).all(dim=-1) & torch.isfinite(hidden).all(dim=-1)
        failed_at = torch.where(ok & ~finite & (failed_at < 0), step, failed_at)
        ok = ok & finite
        vec = torch.where(ok[:, None], vec, torch.zeros_like(vec))
        if observer is not None:
            observer(step, hidden, vec)
        hidden = extend(model, batch, ones, inputs_embeds=vec[:, None, :], want="hidden", agent=agent, kind="latent")
    trace = RolloutTrace(norms=norms.tolist(), failed_at=[None if s < 0 else s for s in failed_at.tolist()])
    return hidden, trace
