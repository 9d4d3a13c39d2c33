"""`latentmas bench`: the summary's names and target logic, and one smoke run on a tiny model (no timing asserted:
timing targets live in the benchmark's output, never in unit tests)."""
from __future__ import annotations

import json

from latentmas.bench.report import summarise

SUMMARY_NAMES = {"latent_step_over_decode_step", "text_over_latent_end_to_end", "generated_token_reduction",
                 "w_a_cached_load_s"}


def _sp(x):
    return {"median": x, "min": x, "max": x, "n": 1}


def _constructed():
    e2e = {"baseline": {"s_per_sample": _sp(1.0), "samples_per_s": _sp(1.0), "generated_tokens_per_sample": 50},
           "text_mas/sequential": {"s_per_sample": _sp(8.0), "samples_per_s": _sp(0.125),
                                   "generated_tokens_per_sample": 400},
           "latent_mas/sequential": {"s_per_sample": _sp(1.6), "samples_per_s": _sp(0.625),
                                     "generated_tokens_per_sample": 100}}
    steps = [{"latent_over_decode": 0.7}, {"latent_over_decode": 0.95}]
    scaling = [{"variant": v, "batch_size": b, "samples_per_s": _sp(r)}
               for v, rates in (("baseline", (1.0, 3.0)), ("text_mas/sequential", (0.1, 0.2)),
                                ("latent_mas/sequential", (0.5, 1.5)))
               for b, r in zip((1, 8), rates)]
    return {"step_costs": steps, "end_to_end": e2e, "batch_scaling": scaling,
            "w_a": {"cached_load_s": _sp(0.2)}, "environment": {"dtype": "bfloat16"}}


def test_summary_names_values_and_targets():
    """Catches a renamed entry (docs/bench/latest.json and the README cite these names), a ratio computed upside
    down (latent/text instead of text/latent), the best step ratio reported instead of the worst, and a CPU run
    judged against the GPU batch-scaling target."""
    s = summarise(_constructed(), on_gpu=False)
    assert set(s) == SUMMARY_NAMES | {f"batch8_over_batch1.{m}" for m in ("baseline", "text_mas", "latent_mas")}
    assert all(set(e) == {"value", "target", "met"} for e in s.values())
    assert s["text_over_latent_end_to_end"] == {"value": 5.0, "target": 4.0, "met": True}
    assert s["generated_token_reduction"] == {"value": 0.75, "target": 0.7, "met": True}
    assert s["latent_step_over_decode_step"] == {"value": 0.95, "target": 0.9, "met": False}
    assert s["batch8_over_batch1.text_mas"] == {"value": 2.0, "target": 2.5, "met": False}
    assert s["batch8_over_batch1.baseline"]["met"] is True
    assert summarise(_constructed(), on_gpu=True)["batch8_over_batch1.baseline"] == {"value": 3.0, "target": 5.0,
                                                                                     "met": False}
    assert s["w_a_cached_load_s"]["met"] is True and "over_reference_samples_per_s" not in s


def test_batch_scaling_bound_by_prompts():
    """bound_by_prompts = batch 1's seconds per sample over batch 8's prompt seconds per sample; catches the bound
    taken from the wrong batch size or from another phase."""
    r = _constructed()
    for row in r["batch_scaling"]:
        if row["variant"] == "latent_mas/sequential":
            row["phases_s_per_sample"] = ({"prompt": 0.2, "latent": 0.5, "text": 1.0, "other": 0.3}
                                          if row["batch_size"] == 1 else
                                          {"prompt": 0.4, "latent": 0.1, "text": 0.1, "other": 0.1})
    s = summarise(r, on_gpu=False)  # batch 1: 0.5 samples/s = 2 s/sample; batch 8's prompts: 0.4 s/sample
    assert s["batch8_over_batch1.latent_mas"]["bound_by_prompts"] == 5.0
    assert "bound_by_prompts" not in s["batch8_over_batch1.baseline"]  # no phases timed for it
    from latentmas.bench.report import markdown

    env = {"model": "m", "device": "cpu", "device_name": "x", "dtype": "float32", "threads": 2, "torch": "t",
           "transformers": "t", "git_commit": "c"}
    md = markdown({"environment": env, "summary": s, "settings": {}})
    assert "| `batch8_over_batch1.latent_mas` | 3.0 | 2.5 | True | 5.0 (bound_by_prompts) |" in md  # beside the ratio


def test_end_to_end_bound_full_batches():
    """bound_full_batches = text_mas s/sample over latent_mas's with its text phase replaced by its generated tokens
    at the cheapest per-token decode cost of step-cost cells no larger than the end-to-end batch. Catches the bound
    taken from a batch larger than the run's (batch 16's 1 ms/token here), the text phase not removed, the decode
    step not divided by its batch, the ratio upside down, and a bound claimed without phases or step costs."""
    r = _constructed()
    r["step_costs"] = [{"latent_over_decode": 0.8, "batch_size": b, "decode_ms": _sp(ms)}
                       for b, ms in ((1, 40.0), (8, 48.0), (16, 16.0))]
    lat = r["end_to_end"]["latent_mas/sequential"]
    lat["batch_size"] = 8
    lat["phases_s_per_sample"] = {"prompt": 0.5, "latent": 0.2, "text": 0.8, "other": 0.1}
    s = summarise(r, on_gpu=False)  # floor: 1.6 - 0.8 + 100 tokens x 6 ms = 1.4 s; text_mas 8.0 s
    assert s["text_over_latent_end_to_end"]["bound_full_batches"] == round(8.0 / 1.4, 4)
    assert s["text_over_latent_end_to_end"]["value"] == 5.0
    del lat["phases_s_per_sample"]
    assert "bound_full_batches" not in summarise(r, on_gpu=False)["text_over_latent_end_to_end"]


def test_phase_clock_bills_forwards_to_their_kind_and_gaps_to_other(monkeypatch):
    """Through kv's two hooks (segment starting, segment appended): catches gap time billed to a segment kind
    (the prompt phase would then carry token picks and hand-offs), an interval billed to the next segment's kind,
    the tail after the last segment lost, seconds not accumulated across runs, a failed run counted."""
    import pytest
    import torch

    from latentmas.bench import measure
    from latentmas.engine import kv

    ticks = iter([0.0, 1.0, 3.0, 3.5, 4.0, 4.25, 5.0, 10.0, 10.5, 11.5, 12.0, 12.25, 20.0, 21.0, 22.0])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    clock = measure.PhaseClock(torch.device("cpu"))

    def fake_run_batch(kinds, progress=None):
        for kind in kinds:
            kv.segment_starting()
            progress("agent", kind)
        if "boom" in kinds:
            raise ValueError("boom")
        return len(kinds)

    # marks: start 0, [1 prompt 3], [3.5 latent 4], [4.25 text 5], end 10
    assert clock.run(fake_run_batch, ("prompt", "latent", "text")) == 3
    assert clock.seconds == {"prompt": 2.0, "latent": 0.5, "text": 0.75, "other": 6.75}
    assert clock.run(fake_run_batch, ("prompt",)) == 1  # start 10.5, [11.5 prompt 12], end 12.25
    assert clock.seconds == {"prompt": 2.5, "latent": 0.5, "text": 0.75, "other": 8.0}
    assert clock.per_sample(2) == {"prompt": 1.25, "latent": 0.25, "text": 0.375, "other": 4.0}
    with pytest.raises(ValueError):
        clock.run(fake_run_batch, ("boom",))
    assert clock.seconds["other"] == 8.0 and "boom" not in clock.seconds  # a failed run adds nothing
    assert kv.SEGMENT_START.get() is None  # the hook is unset after every run


def test_reference_ratio_only_when_timed():
    """Catches an over_reference entry invented without a reference timing, or computed against the wrong method."""
    r = _constructed()
    r["reference"] = {"method": "latent_mas", "arch": "sequential", "samples_per_s": 0.25, "batch_size": 4}
    assert summarise(r, on_gpu=False)["over_reference_samples_per_s"] == {"value": 2.5, "target": 2.0, "met": True}
    # rows timed beside the original in one process: its best batch size in this run's dtype, our in-process number
    dt = r["environment"]["dtype"]
    r["reference"] = [
        {"method": "latent_mas", "dtype": dt, "batch_size": 1, "samples_per_s": 0.05,
         "latentmas_samples_per_s": {"median": 0.2}},
        {"method": "latent_mas", "dtype": dt, "batch_size": 8, "samples_per_s": 0.1,
         "latentmas_samples_per_s": {"median": 0.15}},
        {"method": "latent_mas", "dtype": "other", "batch_size": 8, "samples_per_s": 1.0,
         "latentmas_samples_per_s": {"median": 0.1}},
        {"method": "baseline", "dtype": dt, "batch_size": 8, "samples_per_s": 9.0,
         "latentmas_samples_per_s": {"median": 0.1}}]
    assert summarise(r, on_gpu=False)["over_reference_samples_per_s"] == {"value": 1.5, "target": 2.0, "met": False}
    r["reference"] = {"method": "baseline", "samples_per_s": 0.5, "batch_size": 4}  # same method, this run's row
    assert summarise(r, on_gpu=False)["over_reference_samples_per_s"]["value"] == 2.0


def test_bench_smoke_on_tiny_model(tiny_model_dir, tmp_path):
    """The command end to end on a tiny model with the smallest settings: JSON with environment stamp and summary,
    Markdown and figure written; W_a taken from the weight files in a fresh process."""
    from latentmas.bench.cli import cli_main

    out = tmp_path / "bench"
    rc = cli_main([str(tiny_model_dir("llama")), "--quick", "--out-dir", str(out), "--device", "cpu",
                   "--contexts", "16", "--step-batch-sizes", "1,2", "--step-repeats", "1", "--n", "2",
                   "--scaling-batch-sizes", "1,2", "--methods", "text_mas,latent_mas", "--decode-graphs", "static"])
    assert rc == 0
    result = json.loads((out / "bench.json").read_text())
    env = result["environment"]
    assert {"model", "device", "dtype", "threads", "torch", "transformers", "git_commit"} <= set(env)
    assert result["w_a"]["source"] == "weight-files"
    assert set(result["summary"]) == SUMMARY_NAMES  # no batch8_over_batch1.*: batch 8 was not in the scaling sizes
    lat = result["end_to_end"]["latent_mas/sequential"]
    assert lat["kv_bytes_handed_per_sample"] > 0 and lat["latent_steps_per_sample"] == 3 * 2
    # phases: every row timed; only latent_mas thinks latently; text_mas decodes
    txt = result["end_to_end"]["text_mas/sequential"]
    assert lat["phases_s_per_sample"]["latent"] > 0 and txt["phases_s_per_sample"]["latent"] == 0
    assert txt["phases_s_per_sample"]["text"] > 0 and lat["phases_s_per_sample"]["prompt"] > 0
    assert all(set(r["phases_s_per_sample"]) == {"prompt", "latent", "text", "other"} for r in result["batch_scaling"])
    assert (out / "bench.md").read_text().startswith("# latentmas bench") and (out / "bench.png").stat().st_size
    # trace part: none writes nothing, summary something, full at least as much; same latent work in each
    trace = {r["trace"]: r for r in result["trace"]}
    assert list(trace) == ["none", "summary", "full"] and trace["none"]["trace_bytes_per_sample"] == 0
    assert 0 < trace["summary"]["trace_bytes_per_sample"] <= trace["full"]["trace_bytes_per_sample"]
    assert len({r["latent_steps_per_sample"] for r in trace.values()}) == 1 and trace["none"]["over_none"] == 1.0
    # dtype part: the CPU's float32 compared with bfloat16 on the same samples (float32 agrees with itself)
    d = result["dtype"]
    assert d["names"] == ["float32", "bfloat16"] and [r["variant"] for r in d["end_to_end"]] == ["latent_mas/sequential"]
    row = d["end_to_end"][0]
    assert row["float32"]["same_final_text_as_float32"] == 1.0 and 0 <= row["bfloat16"]["same_final_text_as_float32"] <= 1
    assert set(d["step_costs"]) == {"float32", "bfloat16"} and row["speedup_bfloat16"] > 0
    # kernel part: plain linears (the reference) vs oneDNN-packed ones, same samples, same greedy texts
    k = result["kernel"]
    assert k["names"] == ["aten", "onednn"] and [r["variant"] for r in k["end_to_end"]] == ["latent_mas/sequential"]
    assert k["end_to_end"][0]["onednn"]["same_final_text_as_aten"] == 1.0 and set(k["step_costs"]) == set(k["names"])
    assert "linear_kernel" in env
    # graph part: eager (the reference, always first) vs static on the same samples; static decodes the same text
    g = result["graph"]
    assert g["graphs"] == ["eager", "static"] and [r["variant"] for r in g["rows"]] == ["latent_mas/sequential"]
    assert g["rows"][0]["static"]["same_final_text_as_eager"] == 1.0 and g["rows"][0]["static"]["first_pass_s"] > 0
    # prefill part: one padded forward (the reference) vs one per sample, each method of the first architecture,
    # on batches with real padding; greedy texts agree
    pre = {r["variant"]: r for r in result["prefill"]}
    assert list(pre) == ["text_mas/sequential", "latent_mas/sequential"]
    for r in pre.values():
        assert r["per_row"]["same_final_text_as_padded"] == 1.0 and 0 < r["prompt_pad_share"] < 1
    # retire part: every row decoded to the end of its batch (the reference) vs finished rows retired; same texts
    ret = {r["variant"]: r for r in result["retire"]}
    assert list(ret) == ["text_mas/sequential", "latent_mas/sequential"]
    assert all(r["on"]["same_final_text_as_off"] == 1.0 and r["on"]["samples_per_s"]["median"] > 0
               for r in ret.values())
    md = (out / "bench.md").read_text()
    assert "## Retiring finished rows" in md
    assert "## Trace level" in md and "## Compute dtype: float32 vs bfloat16" in md and "## Decode graphs" in md
    assert "## Prompt prefill" in md and "## Linear kernel: aten vs onednn" in md and "## Where the time goes" in md


def test_bench_rejects_bad_parts_and_backends(tiny_model_dir, capsys):
    """Bad --skip or --backend values: exit 2 with one message naming them, before any model is loaded."""
    from latentmas.bench.cli import cli_main

    model = str(tiny_model_dir("llama"))
    assert cli_main([model, "--skip", "steps,warp"]) == 2
    assert "warp" in capsys.readouterr().err
    assert cli_main([model, "--decode-graphs", "static,cudagraph"]) == 2
    assert "cudagraph" in capsys.readouterr().err
    assert cli_main([model, "--device", "cpu", "--decode-graphs", "compiled"]) == 2  # packed linears by default
    assert "--linear-kernel aten" in capsys.readouterr().err
    assert cli_main([model, "--backend", "vllm"]) == 2  # nothing to compare with
    assert "--backend 'vllm'" in capsys.readouterr().err
