"""The latent lens (engine/lens.py), latent health tables/figures and the audit pages (report/audit.py)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from latentmas.engine import latent as latent_mod
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.latent import LatentMapper
from latentmas.engine.lens import LatentLens, step_flags, trace_bytes_per_sample
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.topology import load_topology


def _mapper(lm):
    from latentmas.engine.alignment import compute_alignment

    al = compute_alignment(lm.model, 1e-5)
    return LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)


def _samples(n=2):
    qs = ["What is 2+3?", "A farmer has 7 cows and buys 5 more. How many cows now?"]
    return [SampleInput(f"s{i}", qs[i % 2], "Answer with a number.", seed=i) for i in range(n)]


def _settings(trace, steps=3):
    return MethodSettings("latent_mas", latent_steps=steps, decode=DecodeSettings(4, greedy=True), trace=trace)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_lens_matches_a_direct_forward(tiny_lm, arch):
    """Step t's lens = the full model's next-token logits after the prompt and t fed vectors, recomputed from scratch
    with one plain forward over [prompt embeddings, vec_0..vec_{t-1}]. Catches a transposed/wrong head (qwen2 is
    untied), a lens read one position late or early (the post-step hidden state), re-applying the final norm, and
    nearest-embedding cosines against the wrong matrix or axis."""
    lm = tiny_lm(arch)
    mapper = _mapper(lm)
    seen = []
    original = latent_mod.latent_rollout

    def spy(*args, observer=None, **kw):
        def both(step, hidden, vec):
            seen.append(vec.clone())
            observer(step, hidden, vec)
        return original(*args, observer=both, **kw)

    import latentmas.engine.methods as methods
    methods.latent_rollout, saved = spy, methods.latent_rollout
    try:
        topo = load_topology("sequential")
        out = run_batch(lm, topo, _samples(1), _settings("full", steps=3), mapper)[0]
    finally:
        methods.latent_rollout = saved
    first = out.agents[0]
    col = first["latent"]["lens"]
    prompt_ids = lm.tokenizer(first["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    emb = lm.model.get_input_embeddings()(prompt_ids)  # [1, S, d] (gemma3: scaled as the model sees it)
    vecs = seen[:3]  # the first agent's three fed vectors
    w_in = lm.model.get_input_embeddings().weight.float()
    for t in range(3):
        x = torch.cat([emb] + [v[:, None, :].to(emb.dtype) for v in vecs[:t]], dim=1)
        with torch.no_grad():
            logits = lm.model(inputs_embeds=x).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        assert col["top_id"][t] == logp.topk(10).indices.tolist(), f"step {t}"
        assert col["top_p"][t] == pytest.approx(logp.topk(10).values.exp().tolist(), abs=2e-4)
        assert col["entropy"][t] == pytest.approx(float(-(logp.exp() * logp).sum()), abs=2e-4)
        cos = torch.nn.functional.cosine_similarity(vecs[t].float(), w_in, dim=-1)  # [V]
        assert col["near_id"][t] == cos.topk(5).indices.tolist()
        assert col["near_cos"][t] == pytest.approx(cos.topk(5).values.tolist(), abs=2e-4)
    assert col["top"][0] == [lm.tokenizer.decode([i]) for i in col["top_id"][0]]
    # after-map norm / before-map norm, with the rollout's own after-map norms
    assert col["ratio"] == pytest.approx([a / h for a, h in zip(first["latent"]["norms"], col["norm_h"])], rel=1e-3)
    assert col["cos_prev"][0] is None and col["drift"][0] == pytest.approx(0.0, abs=1e-4)


def test_trace_none_never_builds_an_observer(tiny_lm, monkeypatch):
    """`trace: none` passes observer=None to every rollout (the rollout's no-extra-work path) and records no lens or
    prompt; summary passes one. Catches an always-on lens (a per-step cost for every run)."""
    import latentmas.engine.methods as methods

    lm = tiny_lm("qwen2")
    mapper = _mapper(lm)
    got = []
    original = methods.latent_rollout

    def spy(*args, observer=None, **kw):
        got.append(observer)
        return original(*args, observer=observer, **kw)

    monkeypatch.setattr(methods, "latent_rollout", spy)
    topo = load_topology("sequential")
    none = run_batch(lm, topo, _samples(2), _settings("none"), mapper)
    assert got and all(o is None for o in got)
    assert all("lens" not in a["latent"] and "prompt" not in a for o in none for a in o.agents if a["latent"])
    got.clear()
    summ = run_batch(lm, topo, _samples(2), _settings("summary"), mapper)
    assert got and all(o is not None for o in got)
    # the lens does not change what the model computes
    assert [o.final_text for o in none] == [o.final_text for o in summ]
    assert [a["latent"]["norms"] for a in none[0].agents if a["latent"]] == \
        [a["latent"]["norms"] for a in summ[0].agents if a["latent"]]


def test_summary_is_compact_and_bench_can_measure_it(tiny_lm):
    """summary keeps 3 lens tokens and 1 nearest token per step and no ids; full keeps more; none adds 0 bytes.
    Catches a summary that silently stores the full trace (records balloon) and a size function that counts
    nothing or counts what `none` records hold anyway."""
    lm = tiny_lm("qwen2")
    mapper = _mapper(lm)
    topo = load_topology("sequential")
    recs = {lv: [{"agents": o.agents} for o in run_batch(lm, topo, _samples(2), _settings(lv, 4), mapper)]
            for lv in ("summary", "full")}
    col = recs["summary"][0]["agents"][0]["latent"]["lens"]
    assert len(col["top"]) == 4 and all(len(t) == 3 for t in col["top"]) and all(len(n) == 1 for n in col["near"])
    assert "top_id" not in col
    small, big = trace_bytes_per_sample(recs["summary"]), trace_bytes_per_sample(recs["full"])
    assert 0 < small < big
    def nbytes(x):
        return len(json.dumps(x, ensure_ascii=False).encode("utf-8"))

    per_record = [sum(nbytes(a["latent"]["lens"]) for a in r["agents"] if a["latent"])
                  + sum(nbytes(a["prompt"]) for a in r["agents"]) for r in recs["summary"]]
    assert small == sum(per_record) / 2
    none = [{"agents": o.agents} for o in run_batch(lm, topo, _samples(2), _settings("none", 4), mapper)]
    assert trace_bytes_per_sample(none) == 0


def test_health_flags_and_warning_name_agent_and_step(caplog):
    """A norm blow-up at step 2 and a near-uniform lens at step 1 are flagged at those steps; a healthy step is not.
    Catches flags computed against the wrong baseline or an off-by-one step index."""
    col = {"norm_h": [10.0, 11.0, 80.0, None], "entropy": [1.0, 9.9, 1.0, None], "log_vocab": 10.0}
    assert step_flags(col) == [{"step": 1, "kind": "entropy"}, {"step": 2, "kind": "norm"},
                               {"step": 3, "kind": "nonfinite"}]
    from latentmas.engine.lens import AgentLens

    rec = AgentLens.__new__(AgentLens)
    rec.agent, rec.bsz = "critic", 1
    with caplog.at_level("WARNING"):
        rec._warn([{"flags": step_flags(col)}])
    text = caplog.text
    assert "agent critic step 2: norm" in text and "agent critic step 1: entropy" in text
    assert math.isfinite(col["log_vocab"])


# ----------------------------------------------------------------------------------------------------------------------
# Audit page on the real model, rendered by headless Chromium
# ----------------------------------------------------------------------------------------------------------------------
CHROMIUM_APT = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]


def _chromium() -> str | None:
    """A Chromium binary; installed from apt (Debian package ``chromium``) when absent and possible."""
    import os
    import shutil
    import subprocess

    def find():
        return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

    if find() is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = subprocess.run(CHROMIUM_APT, capture_output=True, env=env, timeout=900).returncode == 0
        if not ok:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
            subprocess.run(CHROMIUM_APT, capture_output=True, env=env, timeout=900)
    return find()


def _headless(chromium: str, page, *args: str):
    import subprocess

    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--enable-logging=stderr", "--v=0", "--no-first-run", "--user-data-dir=" + str(page.parent / "profile"),
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.slow
def test_real_model_audit_page_renders_in_headless_chromium(real_lm, tmp_path):
    """One real Qwen2.5-Coder-0.5B latent_mas GSM8K sample through `latentmas run` → `score` → `show --html`; the page
    renders in headless Chromium with the question, every agent, lens tokens, answer and score in the DOM, a
    screenshot, and no console errors (the detector is proven on a page with a deliberate console error). Catches a
    page that needs external assets/scripts, loses agents or lens rows, or does not load at all."""
    import re
    import subprocess
    import sys

    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not found and not installable (apt-get install -y chromium)")
    recs, scored, page = tmp_path / "r.jsonl", tmp_path / "s.jsonl", tmp_path / "page.html"
    run = [sys.executable, "-m", "latentmas.cli", "run", "--model", real_lm.path, "--task", "gsm8k", "--method",
           "latent_mas", "--latent-steps", "6", "--n", "1", "--greedy", "--max-new-tokens", "96", "--out", str(recs)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "latentmas.cli", "score", str(recs), "--out", str(scored)], check=True,
                   capture_output=True, timeout=300)
    from latentmas.records import read_records

    rec = read_records(scored)[0]
    shown = subprocess.run([sys.executable, "-m", "latentmas.cli", "show", str(scored), "--id", rec["sample_id"],
                            "--html", str(page)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "planner" in shown.stdout and rec["gold"] in shown.stdout  # the terminal rendering
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text) and "<script" not in text  # self-contained

    shot = tmp_path / "page.png"
    got = _headless(chromium, page, "--window-size=1280,3000", f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, got.stderr[-2000:]
    dom = _headless(chromium, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    d = dom.stdout
    assert 'id="question"' in d and "Janet" in d  # the first GSM8K question
    agents = [a["name"] for a in rec["agents"]]
    assert all(f'data-agent="{a}"' in d for a in agents) and len(agents) == 4
    assert d.count('class="lens-token"') >= 3 * 6 * 3  # 3 latent agents x 6 steps x top-3
    assert 'id="final-answer"' in d and 'id="score"' in d and rec["reason"].split(":")[0] in d
    import shutil

    keep = Path(os.environ.get("LATENTMAS_AUDIT_ARTIFACTS", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    for f in (shot, page, scored):
        if keep != tmp_path:
            shutil.copy(f, keep / f.name)

    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom')</script></body></html>")
    assert _console_errors(_headless(chromium, bad, "--dump-dom").stderr), "console-error detector sees nothing"


@pytest.fixture(scope="module")
def traced_records(tiny_lm, tmp_path_factory):
    """Scored-looking records of one tiny latent_mas cell and one text_mas cell (same samples)."""
    lm = tiny_lm("qwen2")
    mapper = _mapper(lm)
    topo = load_topology("sequential")
    out = {}
    for method in ("latent_mas", "text_mas"):
        settings = MethodSettings(method, latent_steps=3 if method == "latent_mas" else 0,
                                  decode=DecodeSettings(5, greedy=True), trace="summary")
        recs = []
        for i, (s, o) in enumerate(zip(_samples(2), run_batch(lm, topo, _samples(2), settings, mapper))):
            recs.append({"model": "tiny", "task": "gsm8k", "method": method, "arch": "sequential",
                         "latent_steps": 3 if method == "latent_mas" else None, "realign": True, "memory": "all",
                         "seed": 0, "sample_id": s.sample_id, "index": i, "question": s.question,
                         "final_text": o.final_text, "gold": "5", "agents": o.agents, "prediction": "5",
                         "correct": (i == 0) == (method == "latent_mas"), "reason": "correct" if i == 0 else "wrong",
                         "tokens": {"total": 10}, "wall_s": 0.1})
        out[method] = recs
    return out


def test_health_table_per_cell(traced_records, tmp_path):
    """One row per latent_mas cell (text_mas skipped), share flagged and means over the lens columns. Catches means
    over the wrong field and text cells leaking into the latent table."""
    from latentmas.report.latent_health import cell_health, cli_main

    recs = traced_records["latent_mas"] + traced_records["text_mas"]
    rows = cell_health(recs)
    assert len(rows) == 1 and rows[0]["n"] == rows[0]["n_traced"] == 2
    cols = [a["latent"]["lens"] for r in traced_records["latent_mas"] for a in r["agents"] if a["latent"]]
    ratios = [x for c in cols for x in c["ratio"]]
    assert rows[0]["mean_norm_ratio"] == pytest.approx(sum(ratios) / len(ratios))
    assert rows[0]["mean_lens_entropy"] == pytest.approx(sum(x for c in cols for x in c["entropy"]) / (len(cols) * 3))
    flagged = sum(any(c["flags"] for c in [a["latent"]["lens"] for a in r["agents"] if a["latent"]])
                  for r in traced_records["latent_mas"])
    assert rows[0]["share_flagged"] == flagged / 2
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert cli_main([str(p), "--out-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f")]) == 0
    assert "| tiny | gsm8k | sequential k3" in (tmp_path / "t/latent_health.md").read_text()
    assert (tmp_path / "f/latent_lens.png").stat().st_size > 5000


def test_audit_pages_show_each_agent_lens_and_verdict(traced_records, tmp_path, capsys):
    """The page of a latent sample lists the question, every agent with its rendered prompt, one lens row per step,
    the answer and the score; the compare page shows both methods; `show` errors (exit 2) on an unknown id. Catches
    dropped agents, lens rows off by a step and unescaped model text (tokens like '<|im_end|>' must not become tags)."""
    from latentmas.report.audit import cli_main, write_site

    lat, txt = tmp_path / "lat.jsonl", tmp_path / "txt.jsonl"
    lat.write_text("".join(json.dumps(r) + "\n" for r in traced_records["latent_mas"]))
    txt.write_text("".join(json.dumps(r) + "\n" for r in traced_records["text_mas"]))
    assert cli_main([str(lat), "--id", "s0", "--html", str(tmp_path / "p.html")]) == 0
    term = capsys.readouterr().out
    assert "planner" in term and "judger" in term and "correct" in term
    page = (tmp_path / "p.html").read_text()
    assert 'id="question"' in page and "What is 2+3?" in page
    for a in traced_records["latent_mas"][0]["agents"]:
        assert f'data-agent="{a["name"]}"' in page
        assert html_escaped(a["prompt"]) in page
    assert page.count("<tr") == 3 * (3 + 1)  # 3 latent agents x (header + 3 steps)
    assert "<|im_end|>" not in page and 'class="ok">correct' in page
    pages = write_site({"tiny/gsm8k/latent/seed0": lat, "tiny/gsm8k/text/seed0": txt}, tmp_path / "site")
    index = (tmp_path / "site/index.html").read_text()
    assert 'href="tiny/gsm8k/latent/seed0/compare.html"' in index and len(pages) == 1 + 2 + 1 + 2
    cmp = (tmp_path / "site/tiny/gsm8k/latent/seed0/compare.html").read_text()
    assert "latent_mas vs text_mas" in cmp and cmp.count('class="sample"') == 2
    assert cli_main([str(lat), "--id", "nope"]) == 2 and "no sample 'nope'" in capsys.readouterr().err


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_run_trace_default_is_the_config_default():
    """`latentmas run` without --trace traces as a config that sets nothing (summary), and a pipeline shard passes
    its trace explicitly. Catches the runner's default drifting from the schema's (DEFAULT_TRACE is stated twice)."""
    from latentmas.pipeline import experiment
    from latentmas.pipeline.runner import build_parser

    ns = build_parser().parse_args(["--model", "m", "--task", "gsm8k", "--method", "latent_mas", "--out", "o"])
    cfg = experiment.validate_config({"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {}},
                                      "methods": ["latent_mas"], "trace": "none"})
    assert ns.trace == "summary" == experiment.validate_config(
        {"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {}}, "methods": ["latent_mas"]})["trace"]
    cell = next(iter(experiment.expand_cells(cfg).values()))
    args = experiment.run_args(experiment.cell_settings(cfg, cell, 0, 1), "d", "m", "x.parquet", "a.safetensors")
    assert args[args.index("--trace") + 1] == "none"


def test_collapse_to_end_of_turn_is_flagged_at_its_step(tiny_lm, caplog):
    """A latent step whose lens reads the model's end-of-turn token with p >= SANE.collapse_p is flagged `collapse`
    at that step (and warned with agent and step); the same step is not flagged when that token is not a stop id,
    and a diffuse step never is. Catches: the flag on the wrong step, on any confident token, or never raised."""
    import torch

    from latentmas.engine.lens import LatentLens

    lm = tiny_lm("qwen2")
    head = lm.model.get_output_embeddings().weight.detach().float()  # [V, d]
    stop = int(head.norm(dim=-1).argmax())  # the row with the largest norm wins its own dot product
    diffuse = torch.zeros(1, head.shape[1])  # uniform lens
    sharp = head[stop][None, :] * (200.0 / head[stop].norm())  # lens top-1 = stop with p ~ 1

    def flags(stop_ids):
        rec = LatentLens(lm.model, lm.tokenizer, "summary", stop_ids).recorder(1, "judger")
        for t, h in enumerate((diffuse, sharp)):
            rec(t, h.to(lm.dtype), h.to(lm.dtype))
        col = rec.finish([[1.0, 1.0]])[0]
        assert col["top_p"][1][0] >= 0.5  # the constructed step really is confident
        return [f for f in col["flags"] if f["kind"] == "collapse"]

    with caplog.at_level("WARNING"):
        assert flags({stop}) == [{"step": 1, "kind": "collapse"}]
    assert "agent judger step 1: collapse" in caplog.text
    assert flags(set()) == [] and flags({(stop + 1) % head.shape[0]}) == []
