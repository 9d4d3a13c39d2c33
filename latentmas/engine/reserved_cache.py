"""Cache layers that keep spare columns, so appending a decode or latent step does not copy the whole cache.

Why: transformers' ``DynamicLayer`` appends with ``torch.cat``, so every one-column step allocates each layer's
keys and values anew and copies everything cached so far: O(context) memory traffic per step per layer, plus the
page faults of a fresh allocation on a CPU (measured: docs/ENGINE.md, "Reserved cache columns"). A
:class:`ReservedLayer` holds each layer's keys/values in a buffer with up to :data:`CHUNK` spare columns; an
append writes in place and
``keys``/``values`` are views of the filled columns. Every reader (attention, :mod:`latentmas.engine.kv`'s column
selections, the static decode's copy, the controls) sees ``[B, H, T, D]`` tensors holding the same numbers as a
``DynamicLayer``'s; only the storage has room to grow. A copy happens once per ``CHUNK`` appended columns.

Views stay valid: columns past a view's end are the only ones ever written later. Code that replaces ``keys`` or
``values`` itself (transformers' ``crop``, ``batch_select_indices``, offloading) is detected and the replacement is
adopted as the new content on the next append. Not supported: two layer objects sharing one buffer (a shallow
``copy.copy`` of a layer or cache), whose appends would overwrite each other's columns; nothing here copies so.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

CHUNK = 128  # spare columns per growth: at most CHUNK unused columns per layer; one copy per CHUNK appended


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose appends write into reserved columns (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, H, capacity, D] each
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None  # what keys/values were set to last

    def reset(self) -> None:
        super().reset()
        self._adopt()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H, n, D]`` keys and values; return the layer's whole keys and values (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._views is None or self.keys is not self._views[0] or self.values is not self._views[1]:
            self._adopt()  # first append, or someone replaced keys/values: their tensors are the content
        filled = self.keys.shape[-2] if self.keys.numel() else 0
        end = filled + key_states.shape[-2]
        if not self._fits(key_states, value_states, end):
            self._grow(key_states, value_states, filled, end)
        k_buf, v_buf = self._buffers
        k_buf[:, :, filled:end].copy_(key_states)
        v_buf[:, :, filled:end].copy_(value_states)
        self.keys, self.values = k_buf[:, :, :end], v_buf[:, :, :end]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def _adopt(self) -> None:
        """Forget the buffers; the next append copies the current keys/values into fresh ones."""
        self._buffers = None
        self._views = None

    def _fits(self, key_states: torch.Tensor, value_states: torch.Tensor, end: int) -> bool:
        if self._buffers is None:
            return False
        def same(buf: torch.Tensor, new: torch.Tensor) -> bool:  # all but the column count
            return (buf.shape[:2] == new.shape[:2] and buf.shape[3:] == new.shape[3:] and buf.dtype == new.dtype
                    and buf.device == new.device)

        k_buf, v_buf = self._buffers
        return same(k_buf, key_states) and same(v_buf, value_states) and end <= k_buf.shape[2]

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, filled: int, end: int) -> None:
        """New buffers with ``CHUNK`` spare columns past ``end``, holding the ``filled`` columns cached so far."""
        capacity = end + CHUNK
        k_buf = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[3])
        v_buf = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[3])
        if filled:
            k_buf[:, :, :filled].copy_(self.keys)
            v_buf[:, :, :filled].copy_(self.values)
        self._buffers = (k_buf, v_buf)


def reserve_columns(cache):
    """Swap every plain ``DynamicLayer`` of ``cache`` (before anything was cached) for a :class:`ReservedLayer`;
    sliding-window, quantized and other layer kinds keep their own storage. Returns the cache."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            cache.layers[i] = ReservedLayer()
    return cache


PLAIN_LAYERS = (DynamicLayer, ReservedLayer)  # layer kinds holding plain [B, H, T, D] tensors, one column per slot
