"""The latent rollout: an agent thinks for m steps without sampling a token.

Each step takes the final-norm hidden state at the sample's last real position, maps it into input-embedding space
(W_a when realignment is on, identity when off), rescales it to the mean input-embedding norm the model sees, and
feeds it back as ``inputs_embeds`` on the shared cache. Steps are batched; one column is appended per step for every
sample, so all samples stay aligned and none ever reads a PAD position.

Numerical faults are caught at the step they appear: a non-finite mapped vector marks that sample failed (with the
agent and step) and its later steps are fed a zero vector so the other samples of the batch carry on untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latentmas.engine.kv import SequenceBatch, extend


class LatentMapper:
    """h → (h · W_a or h) → rescaled to ``target_norm``; computed in float32 whatever the model dtype."""

    def __init__(self, target_norm: float, w_a: torch.Tensor | None, device: torch.device, dtype: torch.dtype):
        self.target_norm = float(target_norm)
        self.w_a = None if w_a is None else w_a.to(device=device, dtype=torch.float32)
        self.dtype = dtype

    def __call__(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = hidden.to(torch.float32)
        if self.w_a is not None:
            x = x @ self.w_a
        norms = x.norm(dim=-1)
        scaled = x * (self.target_norm / norms.clamp_min(1e-12))[:, None]
        return scaled.to(self.dtype), norms


@dataclass
class RolloutTrace:
    norms: list[list[float]] = field(default_factory=list)  # per sample, per step: norm of the mapped vector
    failed_at: list[int | None] = field(default_factory=list)  # per sample: first non-finite step, or None


def latent_rollout(model, batch: SequenceBatch, hidden: torch.Tensor, steps: int, mapper: LatentMapper,
                   agent: str, alive: torch.Tensor | None = None,
                   observer=None) -> tuple[torch.Tensor, RolloutTrace]:
    """Run ``steps`` latent steps from ``hidden`` ([B, d]); return the last hidden state and a per-sample trace.

    ``observer(step, hidden, vec)``, when given, sees each step's mapped state ``hidden`` [B, d] and the vector fed
    back ``vec`` [B, d] (mapped, rescaled, zero for failed samples); None costs nothing per step.
    """
    bsz = hidden.shape[0]
    trace = RolloutTrace(norms=[[] for _ in range(bsz)], failed_at=[None] * bsz)
    ok = torch.ones(bsz, dtype=torch.bool, device=hidden.device) if alive is None else alive.clone()
    ones = torch.ones(bsz, 1, dtype=torch.long, device=hidden.device)
    for step in range(steps):
        vec, norms = mapper(hidden)
        finite = torch.isfinite(vec).all(dim=-1) & torch.isfinite(hidden).all(dim=-1)
        for b in range(bsz):
            trace.norms[b].append(float(norms[b]))
            if ok[b] and not bool(finite[b]):
                trace.failed_at[b] = step
        ok &= finite
        vec = torch.where(ok[:, None], vec, torch.zeros_like(vec))
        if observer is not None:
            observer(step, hidden, vec)
        hidden = extend(model, batch, ones, inputs_embeds=vec[:, None, :], want="hidden", agent=agent, kind="latent")
    return hidden, trace
