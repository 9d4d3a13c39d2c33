"""Linear layers whose weights oneDNN reorders once, for the CPU's small-batch steps.

Why: on a CPU, ``F.linear`` in float32 goes to MKL's sgemm, which re-reads (packs) the whole weight matrix on every
call. For the few rows of a decode or latent step (batch 2-32) that costs more than the matmul. oneDNN's linear with
the weight reordered once into its blocked layout (the primitive inductor's CPU "freezing" uses:
``mkldnn._reorder_linear_weight`` + ``mkldnn._linear_pointwise``) skips that; the products are the same, only the
kernel's reduction order differs. The measurements live in docs/ENGINE.md, "Packed linears on the CPU".

``linear_kernel`` (a ``load_model`` argument): ``aten`` leaves every ``nn.Linear`` alone (the plain-PyTorch
reference); ``onednn`` packs; ``auto`` packs where it was measured faster: an x86-64 CPU in float32, and in bfloat16
on an x86-64 CPU with AVX512-BF16 but no AMX (AMD Zen 4). It leaves bf16 on AMX machines (unmeasured), other CPU
architectures (oneDNN on Arm: unmeasured) and every other device alone.
"""
from __future__ import annotations

import platform

import torch

from latentmas.contracts import COMPILED_CONFLICT, LINEAR_KERNELS

ROW_HINT = 8  # the batch-row count oneDNN tunes the packed layout for: the demo's decode/latent batch


def onednn_available(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU can pack weights of ``dtype``."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def packing_measured_faster(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether packing was measured faster end to end on this kind of machine (docs/ENGINE.md, "Packed linears"):
    float32 on x86-64 CPUs (measured on AVX2 EPYCs); bfloat16 on AVX512-BF16 CPUs without AMX (Zen 4 EPYC). bf16 on an
    AMX machine is unmeasured, so it is not packed by default there."""
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return cpu_supports("_is_avx512_bf16_supported") and not cpu_supports("_is_amx_tile_supported")
    return False


def cpu_supports(probe: str) -> bool:
    """torch's CPU feature probe ``torch.cpu.<probe>()`` (e.g. ``_is_avx512_bf16_supported``); False where this
    torch has no such probe."""
    return bool(getattr(torch.cpu, probe, lambda: False)())


def resolve_linear_kernel(kernel: str, device: torch.device, dtype: torch.dtype, decode_graph: str = "eager") -> str:
    """``auto`` -> ``onednn`` where :func:`packing_measured_faster` (not under ``decode_graph: compiled``), ``aten``
    elsewhere; an explicit ``onednn`` the machine or the graph cannot run is refused (one clear error before any
    work)."""
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"unknown linear kernel {kernel!r}; use one of {', '.join(LINEAR_KERNELS)}")
    if kernel == "auto":
        measured = packing_measured_faster(device, dtype) and decode_graph != "compiled"
        return "onednn" if measured and onednn_available(dtype) else "aten"
    if kernel == "onednn" and (device.type != "cpu" or not onednn_available(dtype)):
        raise ValueError(f"linear_kernel onednn needs a CPU whose oneDNN can pack {dtype} weights "
                         f"(device {device.type}); use auto or aten")
    if kernel == "onednn" and decode_graph == "compiled":
        raise ValueError(COMPILED_CONFLICT)
    return kernel


class PackedLinear(torch.nn.Module):
    """``y = x · Wᵀ + b`` through oneDNN with ``W`` reordered once. Drop-in for ``nn.Linear`` in inference.

    ``keep_weight``: the output head keeps its plain ``weight`` (the latent lens, W_a and tied input embeddings read
    it), so the head is held twice (vocab × hidden × 4 bytes more: 545 MB for the demo model); inner layers drop
    theirs, so the rest of the model is not held twice."""

    def __init__(self, linear: torch.nn.Linear, keep_weight: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # an opaque oneDNN tensor: kept as a plain attribute, not a buffer, so nothing iterates or moves it
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROW_HINT)
        self.bias = linear.bias
        if keep_weight:
            self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        if x.dtype != self.packed.dtype:  # one message naming both dtypes instead of a oneDNN error
            raise TypeError(f"packed linear holds {self.packed.dtype} weights, got {x.dtype} input")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`PackedLinear` (in place); returns how many."""
    head = model.get_output_embeddings()
    count = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, PackedLinear(child, keep_weight=child is head))
                    count += 1
    return count
