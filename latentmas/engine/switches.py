"""Engine switches: a named setting with a few modes, scoped to a ``with`` block, whose ``auto`` picks a mode by
device type.

Why one mechanism: how prompts are prefilled (``kv.PREFILL``) and whether the decode retires finished rows
(``decoding.RETIRE``) are both choices the bench compares side by side, the CLIs expose, and ``auto`` settles per
device from measurements. A context variable keeps each choice local to the code that asked for it (a bench part, a
recorder), so it never leaks into the next part.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch


class Switch:
    """``modes`` starts with ``auto``; ``auto`` resolves to ``on_cpu`` on a CPU and to ``elsewhere`` otherwise."""

    def __init__(self, name: str, modes: tuple[str, ...], on_cpu: str, elsewhere: str):
        self.name, self.modes, self.on_cpu, self.elsewhere = name, modes, on_cpu, elsewhere
        self._var: contextvars.ContextVar[str] = contextvars.ContextVar(name, default="auto")

    def check(self, mode: str) -> str:
        if mode not in self.modes:
            raise ValueError(f"unknown {self.name} mode {mode!r}; use one of {', '.join(self.modes)}")
        return mode

    def set(self, mode: str) -> contextvars.Token:
        """Set ``mode`` until :meth:`reset` with the returned token (for class-based context managers)."""
        return self._var.set(self.check(mode))

    def reset(self, token: contextvars.Token) -> None:
        self._var.reset(token)

    @contextlib.contextmanager
    def mode(self, mode: str):
        """Everything inside the ``with`` block runs with this switch in ``mode``."""
        token = self.set(mode)
        try:
            yield
        finally:
            self.reset(token)

    def resolve(self, device: torch.device) -> str:
        """The mode in force here, ``auto`` settled for ``device``."""
        mode = self._var.get()
        if mode == "auto":
            return self.on_cpu if device.type == "cpu" else self.elsewhere
        return mode
