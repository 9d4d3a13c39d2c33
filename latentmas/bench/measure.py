"""The measurements of ``latentmas bench``: step costs, end to end per method, batch scaling, memory, W_a.

Rules every measurement follows (why: numbers from one process, measured the same way, are the only comparable
ones): the device is synchronised before every clock read; each figure is repeated and reported as median and
spread (min, max); competing variants are interleaved step by step or batch by batch, in a rotating order, so that
machine drift and warm-up land on all of them alike; one warm-up run precedes each kind of measurement.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, fields

import torch

from latentmas.engine.decoding import DecodeSettings, finite_rows, greedy_pick
from latentmas.engine.kv import SEGMENT_START, SequenceBatch, extend
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.models import LoadedModel


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class PeakMemory:
    """Peak memory while a block runs: CUDA max allocated on a GPU; on the CPU, resident set size sampled every
    5 ms by a thread (ru_maxrss only ever grows for the process, so it cannot separate methods)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mb = self.rss_mb()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self.rss_mb())
        return False


PHASES = ("prompt", "latent", "text", "other")  # segment kinds of kv.extend, then everything between segments


class PhaseClock:
    """Where a run's time goes: seconds inside the forwards of each segment kind (an agent's prompt, a latent step,
    a decoded token) and ``other`` for everything between them (rendering prompts, picking tokens, hand-offs,
    copying results out). Why: it shows which phase a batch size cannot speed up, e.g. prompt prefill on a CPU, which
    costs the same per token at any batch size.

    Each forward is bracketed by kv.SEGMENT_START (before) and kv.STEP_HOOK (after, as ``run_batch``'s progress
    hook). On a GPU the marks are CUDA events, so the run gains no host synchronisation until it returns."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._marks: list[tuple[str, object]] = []

    def _now(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def __call__(self, agent: str, kind: str) -> None:  # a segment's forward ended: the interval is its kind's
        self._marks.append((kind, self._now()))

    def _segment_starts(self) -> None:  # the interval since the last forward ended is other work
        self._marks.append(("other", self._now()))

    def run(self, fn, *args, **kwargs):
        """``fn(*args, progress=self, **kwargs)`` (run_batch's signature) with its time split into phases; a run
        that raises adds nothing."""
        token = SEGMENT_START.set(self._segment_starts)
        self._marks = [("start", self._now())]
        try:
            out = fn(*args, progress=self, **kwargs)
        except BaseException:
            self._marks = []
            raise
        finally:
            SEGMENT_START.reset(token)
        self._marks.append(("other", self._now()))
        self._settle()
        return out

    def _settle(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for (_, t0), (kind, t1) in zip(self._marks, self._marks[1:]):
            self.seconds[kind] += t0.elapsed_time(t1) / 1e3 if self.device.type == "cuda" else t1 - t0
        self._marks = []

    def per_sample(self, samples: int) -> dict[str, float]:
        return {k: round(v / samples, 4) for k, v in self.seconds.items()}


# ----------------------------------------------------------------------------------------------- step costs
def _prefilled(lm: LoadedModel, bsz: int, context: int, chunk: int = 512) -> tuple[SequenceBatch, torch.Tensor]:
    """A batch of ``bsz`` identical sequences of ``context`` real tokens (text tokens tiled), prefilled in chunks."""
    text = "The quick brown fox jumps over the lazy dog while the planner writes a careful plan. "
    ids = lm.tokenizer(text * (context // 8 + 1), add_special_tokens=False)["input_ids"][:context]
    row = torch.tensor(ids, dtype=torch.long, device=lm.device)
    batch = SequenceBatch.empty(lm.model, bsz, lm.device)
    hidden = None
    for start in range(0, context, chunk):
        piece = row[start:start + chunk].expand(bsz, -1)
        hidden = extend(lm.model, batch, torch.ones_like(piece), input_ids=piece, want="hidden", kind="prompt")
    return batch, hidden


def step_costs(lm: LoadedModel, mapper, contexts: list[int], batch_sizes: list[int], repeats: int) -> list[dict]:
    """One latent step (map + decoder stack, last hidden state) vs one KV-cached greedy decode step (decoder + LM
    head on the last position + the decode loop's pick/EOS bookkeeping and its one host sync), same context length,
    alternated step by step on two caches prefilled identically."""
    rows = []
    eos = torch.tensor(sorted(set(lm.eos_token_ids)), device=lm.device)
    for context in contexts:
        for bsz in batch_sizes:
            lat_batch, hidden = _prefilled(lm, bsz, context)
            dec_batch, _ = _prefilled(lm, bsz, context)
            ones = torch.ones(bsz, 1, dtype=torch.long, device=lm.device)
            tok = torch.full((bsz, 1), lm.pad_token_id, dtype=torch.long, device=lm.device)
            times = {"latent": [], "decode": []}
            for i in range(repeats + 1):  # the first pair is the warm-up
                for kind in (("latent", "decode") if i % 2 == 0 else ("decode", "latent")):
                    t0 = clock(lm.device)
                    if kind == "latent":
                        vec, _ = mapper(hidden)
                        hidden = extend(lm.model, lat_batch, ones, inputs_embeds=vec[:, None, :], want="hidden",
                                        kind="latent")
                    else:
                        logits = extend(lm.model, dec_batch, ones, input_ids=tok, want="logits", kind="text")
                        finite = finite_rows(logits)  # what the greedy decode loop does per step
                        nxt = greedy_pick(logits)
                        bool((torch.isin(nxt, eos) | ~finite).all())
                        tok = nxt[:, None]
                    if i > 0:
                        times[kind].append((clock(lm.device) - t0) * 1e3)
            lat, dec = spread(times["latent"]), spread(times["decode"])
            rows.append({"context": context, "batch_size": bsz, "latent_ms": lat, "decode_ms": dec,
                         "latent_over_decode": lat["median"] / dec["median"]})
            del lat_batch, dec_batch
    return rows


# ----------------------------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class Variant:
    method: str
    arch: str  # "single" for the baseline

    @property
    def key(self) -> str:
        return self.method if self.method == "baseline" else f"{self.method}/{self.arch}"


def variants(methods: list[str], archs: list[str]) -> list[Variant]:
    out = []
    for m in methods:
        out += [Variant(m, "single")] if m == "baseline" else [Variant(m, a) for a in archs]
    return out


def kv_bytes_per_position(lm: LoadedModel) -> int:
    """Bytes one cached position costs for one sample, read off a real cache (all layers, keys + values)."""
    batch = SequenceBatch.empty(lm.model, 1, lm.device)
    ids = torch.tensor([[lm.pad_token_id]], device=lm.device)
    extend(lm.model, batch, torch.ones_like(ids), input_ids=ids, want="hidden")
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in batch.cache.layers if layer.keys is not None)


def _handed_positions(out) -> int:
    """Positions (per sample) in the cache the final latent_mas agent continues on: every earlier agent's prompt
    and latent steps (memory policy ``all``)."""
    return sum(a["input_tokens"] + a["latent_steps"] for a in out.agents[:-1])


def interleaved(runs: dict, samples: list[SampleInput], batch_size: int, repeats: int,
                warmups: dict | None = None) -> dict:
    """Competing runs on the same samples, batch by batch, in an order rotated per batch.

    ``runs``: name -> fn(batch) -> outputs, ``fn.device`` telling where to synchronise; ``warmups``: name -> fn run
    once on one sample first (default: the run itself; ``{}``: none). Returns per name the wall seconds of each repeat, the
    outputs of the first repeat by sample id, and the peak memory."""
    for fn in (runs if warmups is None else warmups).values():
        fn(samples[:1])
    names = list(runs)
    walls = {k: [0.0] * repeats for k in names}
    outs = {k: {} for k in names}
    peaks = dict.fromkeys(names, 0.0)
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    turn = 0
    for rep in range(repeats):
        for batch in batches:
            for k in names[turn % len(names):] + names[:turn % len(names)]:
                dev = runs[k].device
                with PeakMemory(dev) as mem:
                    t0 = clock(dev)
                    got = runs[k](batch)
                    walls[k][rep] += clock(dev) - t0
                peaks[k] = max(peaks[k], mem.peak_mb)
                if rep == 0:
                    outs[k].update({s.sample_id: o for s, o in zip(batch, got)})
            turn += 1
    return {"walls": walls, "outs": outs, "peaks": peaks}


def runner(lm: LoadedModel, topo, settings: MethodSettings, mapper, phases: PhaseClock | None = None):
    """One method on one model as an :func:`interleaved` run; ``phases``, if given, accumulates its phase times."""
    def fn(batch):
        if phases is not None:
            return phases.run(run_batch, lm, topo, batch, settings, mapper)
        return run_batch(lm, topo, batch, settings, mapper)

    fn.device = lm.device
    return fn


def end_to_end(lm: LoadedModel, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
               batch_size: int, repeats: int, mapper) -> dict[str, dict]:
    """Every variant on the same samples, interleaved batch by batch (order rotated per batch and repeat);
    per variant: seconds per sample (median and spread over repeats), generated tokens per sample, peak memory,
    KV bytes handed to the final agent (latent_mas), seconds per sample in each phase (:class:`PhaseClock`, mean
    over repeats). Warm-up: each variant once on one sample, 2 tokens."""
    per_pos = kv_bytes_per_position(lm)
    phases = {v.key: PhaseClock(lm.device) for v in vs}
    runs = {v.key: runner(lm, topologies[v.arch], _method_settings(v, settings), mapper, phases[v.key]) for v in vs}
    warm = {v.key: runner(lm, topologies[v.arch], _method_settings(v, settings, warmup=True), mapper) for v in vs}
    got = interleaved(runs, samples, batch_size, repeats, warm)
    n = len(samples)
    result = {}
    for v in vs:
        outs = list(got["outs"][v.key].values())
        wall = got["walls"][v.key]
        handed = sum(_handed_positions(o) for o in outs) / n * per_pos if v.method == "latent_mas" else None
        result[v.key] = {"method": v.method, "arch": v.arch, "samples": n, "batch_size": batch_size,
                         "s_per_sample": spread([w / n for w in wall]), "samples_per_s": spread([n / w for w in wall]),
                         "generated_tokens_per_sample": sum(x["generated_tokens"] for o in outs for x in o.agents) / n,
                         "latent_steps_per_sample": sum(x["latent_steps"] for o in outs for x in o.agents) / n,
                         "peak_mem_mb": round(got["peaks"][v.key], 1), "kv_bytes_handed_per_sample": handed,
                         "phases_s_per_sample": phases[v.key].per_sample(n * repeats)}
    return result


def _method_settings(v: Variant, s: dict, warmup: bool = False) -> MethodSettings:
    dec = DecodeSettings(2 if warmup else s["max_new_tokens"], True)
    return MethodSettings(method=v.method, latent_steps=1 if warmup else s["latent_steps"], decode=dec,
                          agent_max_new_tokens=None if warmup else s.get("agent_max_new_tokens"))


def batch_scaling(lm: LoadedModel, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                  batch_sizes: list[int], repeats: int, mapper) -> list[dict]:
    """samples/s per variant and batch size on the same samples; batch sizes and variants interleaved per repeat;
    seconds per sample in each phase (:class:`PhaseClock`, mean over repeats)."""
    cells = [(v, b) for b in batch_sizes for v in vs]
    walls = {(v.key, b): [] for v, b in cells}
    phases = {(v.key, b): PhaseClock(lm.device) for v, b in cells}
    peaks = {(v.key, b): 0.0 for v, b in cells}
    for rep in range(repeats):
        order = cells[rep % len(cells):] + cells[:rep % len(cells)]
        for v, b in order:
            with PeakMemory(lm.device) as mem:
                t0 = clock(lm.device)
                for i in range(0, len(samples), b):
                    phases[(v.key, b)].run(run_batch, lm, topologies[v.arch], samples[i:i + b],
                                           _method_settings(v, settings), mapper)
                walls[(v.key, b)].append(clock(lm.device) - t0)
            peaks[(v.key, b)] = max(peaks[(v.key, b)], mem.peak_mb)
    n = len(samples)
    return [{"variant": v.key, "method": v.method, "arch": v.arch, "batch_size": b, "samples": n,
             "samples_per_s": spread([n / w for w in walls[(v.key, b)]]), "peak_mem_mb": round(peaks[(v.key, b)], 1),
             "phases_s_per_sample": phases[(v.key, b)].per_sample(n * repeats)}
            for v, b in cells]


def without_eos(lm: LoadedModel) -> LoadedModel:
    """The same model with no stop ids: every agent decodes exactly its token limit (fixes the work per sample when
    comparing with another implementation whose agents may stop at different points)."""
    pad = lm.pad_token_id

    class _NoEos(type(lm)):
        eos_token_ids = property(lambda self: [])
        pad_token_id = property(lambda self: pad)

    return _NoEos(**{f.name: getattr(lm, f.name) for f in fields(lm)})
