"""The latent map's variants, as matrices a :class:`~latentmas.engine.latent.LatentMapper` applies (controls).

Why: W_a is the paper's one learned-free ingredient; to know what it contributes we run the same cell with other maps
and the *same* norm rescale after each (the mapper always rescales to the target norm):

* ``ridge``: W_a itself (realign on);
* ``identity``: no map (realign off);
* ``random_orthogonal``: a seeded Haar-random orthogonal matrix Q (``Q Qᵀ = I``): moves the direction, keeps norms;
* ``random_spectrum``: ``U diag(σ(W_a)) Vᵀ`` with seeded random orthogonal U, V: W_a's singular values (so the same
  stretch of the space) but none of its directions.

Seeds are explicit and the generator is a CPU ``torch.Generator``, so the same seed gives the same map on any device.
"""
from __future__ import annotations

import torch

from latentmas.contracts import MAPPERS


def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    """A Haar-distributed random orthogonal ``[dim, dim]`` float64 matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    gauss = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r))[None, :]  # without the sign fix Q is not uniformly distributed


def random_with_spectrum(w_a: torch.Tensor, seed: int) -> torch.Tensor:
    """``U diag(σ) Vᵀ``: the singular values σ of ``w_a`` ([d, d]) on seeded random orthogonal bases (float64)."""
    sigma = torch.linalg.svdvals(w_a.to(torch.float64))
    dim = w_a.shape[0]
    u = random_orthogonal(dim, seed)
    v = random_orthogonal(dim, seed + 1_000_003)  # a second, independent basis from the same seed
    return (u * sigma[None, :]) @ v.T


def map_matrix(kind: str, dim: int, w_a: torch.Tensor | None, seed: int) -> torch.Tensor | None:
    """The ``[d, d]`` matrix of a mapper kind (None = identity). ``w_a`` is needed by ``ridge`` and ``random_spectrum``."""
    if kind not in MAPPERS:
        raise ValueError(f"unknown mapper {kind!r}; use one of {', '.join(MAPPERS)}")
    if kind == "identity":
        return None
    if kind == "random_orthogonal":
        return random_orthogonal(dim, seed).to(torch.float32)
    if w_a is None:
        raise ValueError(f"mapper {kind!r} needs W_a (an --align-file or a model to compute it from)")
    if kind == "ridge":
        return w_a
    return random_with_spectrum(w_a, seed).to(torch.float32)
