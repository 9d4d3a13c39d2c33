"""Progress a person can watch: tqdm bars on stderr, and a step reporter for the inside of an inference batch.

On a terminal the bars redraw smoothly; in a job log (stderr redirected to ``logs/<stage>/...log``, the file to
``tail -f``) they redraw at most every :data:`LOG_INTERVAL_S` seconds, so a log gains a line per interval, not per
item. The step reporter logs the agent and its prompt / latent step / token count every :data:`LOG_INTERVAL_S`
seconds and whenever an agent starts, so a batch of 4 samples shows life long before its first sample is done.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable

from tqdm import tqdm

log = logging.getLogger("latentmas.progress")

LOG_INTERVAL_S = 10.0


def _interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that is kind to log files (see the module docstring)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if _interactive() else LOG_INTERVAL_S, **kwargs)


class StepReporter:
    """``reporter(agent, kind)`` after every prompt / latent step / token (latentmas.engine.methods.run_batch);
    logs ``batch 2/5 (4 samples) agent planner: latent step 7/10`` at a sane rate."""

    def __init__(self, latent_steps: int, max_new_tokens: int, interval_s: float = LOG_INTERVAL_S,
                 clock=time.monotonic):
        self.latent_steps, self.max_new_tokens = latent_steps, max_new_tokens
        self.interval_s, self.clock = interval_s, clock
        self.label = ""
        self.agent: str | None = None
        self.counts = {"latent": 0, "text": 0}
        self._last = float("-inf")
        self.lines: list[str] = []  # what was logged (for tests and for callers that want the last state)

    def start_batch(self, index: int, n_batches: int, size: int) -> None:
        self.label = f"batch {index + 1}/{n_batches} ({size} sample{'s' if size != 1 else ''})"
        self.agent = None

    def __call__(self, agent: str, kind: str) -> None:
        if agent != self.agent or kind == "prompt":
            self.agent, self.counts = agent, {"latent": 0, "text": 0}
            self._emit(f"agent {agent}: prompt read")
            return
        if kind in self.counts:
            self.counts[kind] += 1
        if self.clock() - self._last >= self.interval_s:
            if kind == "latent":
                self._emit(f"agent {agent}: latent step {self.counts['latent']}/{self.latent_steps}")
            else:
                self._emit(f"agent {agent}: token {self.counts['text'] + 1}/{self.max_new_tokens} (at most)")

    def _emit(self, what: str) -> None:
        self._last = self.clock()
        line = f"{self.label} {what}".strip()
        self.lines.append(line)
        log.info("%s", line)
