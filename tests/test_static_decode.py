"""The fixed-shape decode path (engine/static_decode.py) against the exact eager loop.

Each test catches a way the static path can go wrong while still producing text: positions taken from cache
columns instead of per-sample real-token counts (padded rows drift), the new column left masked (a sample cannot
see its own tokens), the inherited cache not copied, a done sample's column switched on or its position advanced,
a compiled graph that differs from the uncompiled one. (Columns not yet written need no mask of their own: they lie
after the query column, so the causal mask hides them; mutating that changes nothing, as it should.)
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from latentmas.engine.decoding import DecodeSettings, decode
from latentmas.engine.kv import SequenceBatch, extend, left_pad
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.static_decode import BUCKET, StaticDecodeStep
from latentmas.engine.topology import load_topology

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # different lengths: left-padded rows


def _prefilled(lm, latent_steps: int = 2) -> tuple[SequenceBatch, torch.Tensor]:
    """A batch as a final agent meets it: an earlier prompt, latent steps (embeds), then its own prompt (pads in
    the middle of the cache for the shorter rows)."""
    batch = SequenceBatch.empty(lm.model, len(PROMPTS), lm.device)
    ids, mask = left_pad(PROMPTS, lm.pad_token_id, lm.device)
    hidden = extend(lm.model, batch, mask, input_ids=ids, want="hidden", agent="a", kind="prompt")
    for _ in range(latent_steps):
        hidden = extend(lm.model, batch, torch.ones(len(PROMPTS), 1, dtype=torch.long), inputs_embeds=hidden[:, None],
                        agent="a", kind="latent")
    ids2, mask2 = left_pad([p[::-1] for p in PROMPTS[::-1]], lm.pad_token_id, lm.device)
    logits = extend(lm.model, batch, mask2, input_ids=ids2, want="logits", agent="b", kind="prompt")
    return batch, logits


def test_static_step_logits_equal_eager_with_done_rows(tiny_lm):
    """Step by step with fixed feeds, row 1 done for the first three steps then active again: the static step's
    logits equal the eager extend's (same masks, same positions)."""
    lm = tiny_lm("qwen2")
    eager, _ = _prefilled(lm)
    fixed_batch, _ = _prefilled(lm)
    step = StaticDecodeStep(lm.model, fixed_batch, 8, compiled=False)
    assert step.mask.shape[1] % BUCKET == 0 and step.mask.shape[1] >= eager.length + 8
    for t in range(6):
        active = torch.tensor([True, t >= 3, True])
        feed = torch.tensor([[20 + t], [30 + t], [40 + t]])
        want = extend(lm.model, eager, active.long()[:, None], input_ids=feed, want="logits", kind="text")
        got = step(feed, active)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (t, (got - want).abs().max())
    assert torch.equal(fixed_batch.next_position, eager.next_position)


@pytest.mark.parametrize("graph", ["static", "compiled"])
def test_greedy_tokens_equal_eager(tiny_lm, tiny_model_dir, graph):
    """40 greedy tokens (no stop ids: every row runs the whole way) from a padded, latent-prefixed cache. The
    compiled graph needs plain linears (torch.compile cannot trace oneDNN's packed weights): a model loaded so."""
    from latentmas.engine.models import load_model

    lm = tiny_lm("qwen2") if graph == "static" else load_model(
        str(tiny_model_dir("qwen2")), dtype="float32", device="cpu", decode_graph="compiled")
    settings = DecodeSettings(40, True)
    runs = {}
    for g in ("eager", graph):
        batch, logits = _prefilled(lm)
        runs[g] = decode(lm.model, batch, logits, settings, [], lm.pad_token_id, "b", graph=g).tokens
    assert runs[graph] == runs["eager"]
    assert all(len(t) == 40 for t in runs["eager"])


def test_run_batch_latent_mas_same_texts_and_sliding_window_falls_back(tiny_lm):
    """Through run_batch (latent_mas, sequential, batch of 3): the same final texts with decode_graph static; a
    sliding-window model (gemma3) takes the eager path instead of failing."""
    from latentmas.engine.alignment import compute_alignment
    from latentmas.engine.latent import LatentMapper

    samples = [SampleInput(f"s{i}", q, "Answer.", i) for i, q in enumerate(["2+2?", "A longer question here?", "Hi"])]
    settings = MethodSettings("latent_mas", latent_steps=3, decode=DecodeSettings(16, True))
    for arch in ("qwen2", "gemma3"):
        lm = tiny_lm(arch)
        al = compute_alignment(lm.model)
        mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
        topo = load_topology("sequential")
        eager = [o.final_text for o in run_batch(lm, topo, samples, settings, mapper)]
        static = [o.final_text for o in run_batch(dataclasses.replace(lm, decode_graph="static"), topo, samples,
                                                  settings, mapper)]
        assert static == eager, arch


def test_static_steps_report_progress_like_eager(tiny_lm):
    """run_batch(progress=f) sees the same (agent, kind) events with decode_graph static as eager: one per prompt,
    latent step and fed-back token. Catches a static step that skips the step hook (the bench's phase clock would
    then bill its decode to "other") or reports another kind."""
    from latentmas.engine.alignment import compute_alignment
    from latentmas.engine.latent import LatentMapper

    samples = [SampleInput(f"s{i}", q, "Answer.", i) for i, q in enumerate(["2+2?", "A longer question here?"])]
    settings = MethodSettings("latent_mas", latent_steps=2, decode=DecodeSettings(8, True))
    lm = tiny_lm("qwen2")
    al = compute_alignment(lm.model)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    topo = load_topology("sequential")
    events: dict[str, list[tuple[str, str]]] = {"eager": [], "static": []}
    for graph, seen in events.items():
        run_batch(dataclasses.replace(lm, decode_graph=graph), topo, samples, settings, mapper,
                  progress=lambda agent, kind, seen=seen: seen.append((agent, kind)))
    assert events["static"] == events["eager"]
    assert events["static"].count((topo.final_agent.name, "text")) >= 1


def test_unknown_decode_graph_is_refused(tiny_lm, tiny_model_dir):
    from latentmas.engine.models import ModelLoadError, load_model

    with pytest.raises(ModelLoadError, match="decode graph 'cuda-graphs'"):
        load_model(str(tiny_model_dir("qwen2")), dtype="float32", device="cpu", decode_graph="cuda-graphs")
    batch, logits = _prefilled(tiny_lm("qwen2"))
    with pytest.raises(ValueError, match="decode graph 'fast'"):
        decode(tiny_lm("qwen2").model, batch, logits, DecodeSettings(4), [], 0, "b", graph="fast")


def _cfg(**model):
    from latentmas.pipeline import experiment

    return experiment.validate_config({"models": {"m": {"spec": "tiny:qwen2", **model}}, "tasks": {"gsm8k": {"n": 2}},
                                       "methods": ["baseline"]})


@pytest.mark.parametrize("key, option, values", [
    ("decode_graph", "--decode-graph", (("eager", None), ("compiled", "compiled"))),
    ("linear_kernel", "--linear-kernel", (("auto", None), ("aten", "aten"), ("onednn", "onednn")))])
def test_config_passes_model_switches_to_jobs_only_when_not_default(key, option, values):
    """Catches a switch not reaching `latentmas run`, and a default that adds a parameter to every existing job
    (Snakemake would rerun them all)."""
    from latentmas.pipeline import experiment

    for value, want in values:
        cfg = _cfg(**{key: value})
        cell = next(iter(experiment.expand_cells(cfg).values()))
        argv = experiment.run_args(experiment.cell_settings(cfg, cell, 1, 1), "d", "m", "data", None)
        assert (argv[argv.index(option) + 1] if option in argv else None) == want


def test_config_refuses_impossible_graph_settings():
    """Each with one message naming the model's key, before any job starts."""
    from latentmas.pipeline.experiment import ConfigError

    with pytest.raises(ConfigError, match="config.models.m.decode_graph: static is an HF-backend option"):
        _cfg(decode_graph="static", backend="vllm")
    with pytest.raises(ConfigError, match="decode_graph"):
        _cfg(decode_graph="cudagraph")
    with pytest.raises(ConfigError, match="config.models.m.linear_kernel: linear_kernel onednn cannot be combined"):
        _cfg(linear_kernel="onednn", decode_graph="compiled")
    with pytest.raises(ConfigError, match="linear_kernel"):
        _cfg(linear_kernel="mkl")


def test_runner_records_the_decode_graph_in_the_cell_hash(tiny_model_dir, tmp_path, capsys):
    """A shard decoded with static graphs does not resume into an eager shard's file (their numbers may differ in
    the last bits); an explicit eager resumes the default one."""
    from latentmas.pipeline.runner import cli_main

    out = tmp_path / "a.jsonl"
    base = ["--model", str(tiny_model_dir("qwen2")), "--task", "gsm8k", "--method", "baseline", "--n", "1",
            "--greedy", "--max-new-tokens", "4", "--out", str(out)]
    assert cli_main(base) == 0
    eager_hash = out.read_text().split('"config_hash": "')[1][:16]
    assert cli_main(base + ["--decode-graph", "static"]) == 2
    assert "config_hash" in capsys.readouterr().err
    assert cli_main(base + ["--decode-graph", "eager"]) == 0  # same hash: resumes, nothing to do
    static_out = tmp_path / "b.jsonl"
    assert cli_main(base[:-1] + [str(static_out), "--decode-graph", "static"]) == 0
    assert static_out.read_text().split('"config_hash": "')[1][:16] != eager_hash
    assert cli_main(base + ["--backend", "vllm", "--decode-graph", "static"]) == 2  # not silently eager on vLLM
    assert "--decode-graph static is an HF-backend option" in capsys.readouterr().err


def test_compiled_refuses_packed_linears_with_one_clear_error(tiny_lm):
    """A model whose linears were packed (the CPU float32 default) cannot be compiled: one error naming the fix,
    not a dynamo trace from deep inside torch.compile."""
    lm = tiny_lm("qwen2")
    assert lm.linear_kernel == "onednn"
    batch, logits = _prefilled(lm)
    with pytest.raises(ValueError, match="linears are packed: linear_kernel onednn cannot be combined"):
        decode(lm.model, batch, logits, DecodeSettings(4, True), [], lm.pad_token_id, "b", graph="compiled")
