"""The reference backend: transformers through our own engine loop, the shard cut into batches of ``batch_size``.

This is exactly the path `latentmas run` always took: :func:`latentmas.engine.methods.run_batch` per batch, with the
runner's out-of-memory back-off (``backoff(run_fn, batch, on_done)``) around each batch.
"""
from __future__ import annotations

from latentmas.engine.methods import run_batch


class HFBackend:
    name = "hf"

    def __init__(self, lm, batch_size: int, backoff):
        self.lm = lm
        self.batch_size = batch_size
        self.backoff = backoff

    def run_shard(self, topo, samples, settings, mapper, on_done, progress=None) -> None:
        def run_fn(batch):
            return run_batch(self.lm, topo, batch, settings, mapper, progress=progress)

        n_batches = -(-len(samples) // self.batch_size)
        for start in range(0, len(samples), self.batch_size):
            batch = samples[start:start + self.batch_size]
            if progress is not None:
                progress.start_batch(start // self.batch_size, n_batches, len(batch))
            self.backoff(run_fn, batch, on_done)

    def describe(self) -> dict | None:
        return None  # nothing beyond the record's peak_mem_mb / device
