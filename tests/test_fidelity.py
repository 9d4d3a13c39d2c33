"""Paper-fidelity switches (issue 12) and the engine corners that had no test that could fail.

Each test's docstring names the broken variant it catches.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmas.engine import methods as M
from latentmas.engine.alignment import compute_alignment
from latentmas.engine.decoding import DecodeResult, DecodeSettings, decode
from latentmas.engine.kv import SequenceBatch, SlidingWindowBatchError, extend, keep_rows, left_pad
from latentmas.engine.latent import LatentMapper, latent_rollout
from latentmas.engine.models import (SAMPLING_FALLBACKS, THINK_TAG, effective_sampling, encode, load_model,
                                     render_chat)
from latentmas.engine.topology import load_topology
from latentmas.eval import strict
from latentmas.eval.scoring import score_one
from latentmas.eval.tasks import get_task
from latentmas.pipeline import defaults, experiment
from latentmas.pipeline.runner import build_parser, cli_main
from latentmas.records import read_records

PAPER_GENERATION_CONFIG = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0,
                           "repetition_penalty": 1.05}  # Qwen3-style values (+ a penalty so every knob is exercised)


def _copy_model(src: Path, dst: Path, generation_config: dict | None = None, drop_template: bool = False,
                config_edit: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    if generation_config is not None:
        (dst / "generation_config.json").write_text(json.dumps(generation_config))
    if drop_template:
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        cfg_path = dst / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("chat_template", None)
        cfg_path.write_text(json.dumps(cfg))
    if config_edit:
        c = json.loads((dst / "config.json").read_text())
        c.update(config_edit)
        (dst / "config.json").write_text(json.dumps(c))
    return dst


def _run_args(model, out, *extra, method="baseline", n=1):
    return ["--model", str(model), "--task", "gsm8k", "--method", method, "--n", str(n), "--max-new-tokens", "2",
            "--latent-steps", "1", "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------------ 1. one set of defaults


def test_run_defaults_are_the_config_defaults():
    """`latentmas run` without options = a config that sets nothing. Catches: argparse defaults of its own (the old
    sampling / batch 1 / 0.6 / 0.95), i.e. a shard run by hand differing from the pipeline's."""
    ns = build_parser().parse_args(["--model", "m", "--task", "gsm8k", "--method", "latent_mas", "--out", "o"])
    cfg = experiment.validate_config({"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {}},
                                      "methods": ["latent_mas"]})
    dec = cfg["decoding"]
    assert (ns.greedy, ns.batch_size, ns.max_new_tokens, ns.think) == (dec["greedy"], dec["batch_size"],
                                                                      dec["max_new_tokens"], dec["think"])
    assert (ns.greedy, ns.batch_size) == (True, 4)
    for knob in defaults.SAMPLING_KNOBS:
        assert getattr(ns, knob) is None and dec[knob] is None  # both: "the model's generation_config"
    lat = experiment.latent_settings(cfg, "m")
    assert (ns.latent_steps, ns.realign, ns.memory) == (lat["steps"][0], lat["realign"][0], lat["memory"][0])
    # and the pipeline's arguments for a sampling cell say so explicitly (no reliance on the runner's default)
    cfg["decoding"]["greedy"] = False
    cell = next(iter(experiment.expand_cells(cfg).values()))
    args = experiment.run_args(experiment.cell_settings(cfg, cell, 0, 1), "d", "m", "x.parquet", "a.safetensors")
    assert "--no-greedy" in args and "--top-k" not in args


def test_vllm_layout_defaults_are_one_set():
    """`latentmas run --vllm-*` defaults = the config's `vllm` block = VLLMOptions' fields. Catches: a default
    changed in one of the three places (a hand-run vLLM shard laid out differently from the pipeline's)."""
    import dataclasses

    from latentmas.engine.backends.vllm import VLLMOptions

    ns = build_parser().parse_args(["--model", "m", "--task", "gsm8k", "--method", "baseline", "--out", "o"])
    cfg = experiment.validate_config({"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {}},
                                      "methods": ["baseline"]})
    schema = defaults.vllm_defaults()
    assert {k: getattr(ns, f"vllm_{k}") for k in schema} == schema == {**schema, **cfg["vllm"]}
    fields = {f.name: f.default for f in dataclasses.fields(VLLMOptions)}
    fields["prefix_caching"] = fields.pop("enable_prefix_caching")
    assert fields == schema


# ------------------------------------------------------------------------------------------------------- 2. sampling


def test_effective_sampling_resolution(tiny_model_dir, tmp_path):
    """Override > generation_config > transformers' fallback, per knob. Catches: ignoring the model's
    generation_config (top_k 20 would read 50), or letting it beat an explicit override."""
    bare = tiny_model_dir("llama")
    vals, src = effective_sampling(str(bare), {})
    assert vals == SAMPLING_FALLBACKS and set(src.values()) == {"default"}
    paper = _copy_model(bare, tmp_path / "paper", PAPER_GENERATION_CONFIG)
    vals, src = effective_sampling(str(paper), {"top_k": 5})
    assert vals == {"temperature": 0.6, "top_p": 0.95, "top_k": 5, "min_p": 0.0, "repetition_penalty": 1.05}
    assert src == {"temperature": "generation_config", "top_p": "generation_config", "top_k": "config",
                   "min_p": "generation_config", "repetition_penalty": "generation_config"}


def test_records_carry_the_effective_sampling_and_the_engine_gets_it(tiny_model_dir, tmp_path, monkeypatch):
    """Sampling with the paper's generation_config: every record states the knobs used and the engine's
    DecodeSettings carry them (non-final text_mas agents too). Catches: a knob dropped between config and sampler
    (e.g. rebuilding DecodeSettings from temperature/top_p only), or records that say 0.6/0.95 whatever was used."""
    model = _copy_model(tiny_model_dir("qwen2"), tmp_path / "paper", PAPER_GENERATION_CONFIG)
    seen: list[DecodeSettings] = []
    real_decode = M.decode

    def spy(model_, batch, logits, settings, *a, **k):
        seen.append(settings)
        return real_decode(model_, batch, logits, settings, *a, **k)

    monkeypatch.setattr(M, "decode", spy)
    out = tmp_path / "r.jsonl"
    assert cli_main(_run_args(model, out, "--no-greedy", "--top-k", "3", method="text_mas")) == 0
    rec = read_records(out)[0]
    assert (rec["greedy"], rec["temperature"], rec["top_p"], rec["top_k"], rec["min_p"],
            rec["repetition_penalty"]) == (False, 0.6, 0.95, 3, 0.0, 1.05)
    assert rec["sampling_source"]["top_k"] == "config" and rec["sampling_source"]["top_p"] == "generation_config"
    assert len(seen) == 4  # four sequential agents, all decoding
    assert {(s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) for s in seen} == {(0.6, 0.95, 3, 0.0, 1.05)}
    greedy_out = tmp_path / "g.jsonl"
    assert cli_main(_run_args(model, greedy_out)) == 0
    g = read_records(greedy_out)[0]
    assert g["greedy"] is True and g["top_k"] is None and g["temperature"] is None
    assert g["config_hash"] != rec["config_hash"]


# ------------------------------------------------------------------------------------------------- 3. thinking mode


def test_think_modes_render_differently(tiny_lm):
    """`tag` appends the literal <think> (the original's --think); `on` uses the template's switch. Catches: `tag`
    aliased to `on` (the tiny template's on-form is "<think>\\n"), or `tag` appending nothing."""
    tok = tiny_lm("llama").tokenizer
    msgs = [{"role": "user", "content": "hi"}]
    model_default = render_chat(tok, msgs, "model")
    assert render_chat(tok, msgs, "tag") == model_default + THINK_TAG
    assert render_chat(tok, msgs, "on").endswith("<think>\n") and not render_chat(tok, msgs, "off").endswith(">\n")
    assert len({render_chat(tok, msgs, m) for m in ("on", "off", "tag")}) == 3
    with pytest.raises(ValueError, match="think mode"):
        render_chat(tok, msgs, "maybe")


# --------------------------------------------------------------------------------------- 4. prompt styles and versions


def test_mbpp_prompt_styles_and_versions():
    """MBPP+ `original` shows the three test_list asserts, `ours` one; the prompt id differs. Catches: the style
    ignored, or both styles hashing alike (a changed prompt resuming onto old records)."""
    task = get_task("mbppplus")
    rec = task.load()[0]
    ours, orig = task.user_prompt(rec, "ours"), task.user_prompt(rec, "original")
    def n_asserts(text):
        return sum(ln.startswith("assert ") for ln in text.splitlines())

    assert n_asserts(ours) == 1 and n_asserts(orig) == 3
    assert task.prompt_id("ours") != task.prompt_id("original")
    with pytest.raises(ValueError, match="prompt style"):
        get_task("gsm8k").user_prompt(get_task("gsm8k").load()[0], "original")
    cfg = {"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {"prompt_style": "original"}},
           "methods": ["baseline"]}
    with pytest.raises(experiment.ConfigError, match="config.tasks.gsm8k.prompt_style"):
        experiment.validate_config(cfg)


def test_resume_refuses_changed_prompt_version_or_chat_template(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Editing a task's prompt (its version) or passing --chat-template makes another config hash, so resume refuses.
    Catches: a config hash that ignores the prompt wording or the template (old records silently reused)."""
    model = tiny_model_dir("llama")
    out = tmp_path / "r.jsonl"
    assert cli_main(_run_args(model, out)) == 0
    assert cli_main(_run_args(model, out, "--chat-template", "chatml")) == 2
    assert "another configuration" in capsys.readouterr().err
    monkeypatch.setattr(type(get_task("gsm8k")), "prompt_version", "2")
    assert cli_main(_run_args(model, out)) == 2
    assert "another configuration" in capsys.readouterr().err


# --------------------------------------------------------------------------- 5. chat_template through the pipeline path


def _pipeline_workdir(tmp_path: Path, tiny_model_dir, models: dict) -> Path:
    """A working directory laid out as the pipeline leaves it: resources/models/<name>, results/data/gsm8k.parquet."""
    from latentmas.eval.tasks.fetch import write_dataset

    wd = tmp_path / "wd"
    (wd / "results" / "data").mkdir(parents=True)
    (wd / "resources" / "models").mkdir(parents=True)
    for name, drop in models.items():
        _copy_model(tiny_model_dir("llama"), wd / "resources" / "models" / name, drop_template=drop)
    write_dataset(get_task("gsm8k").load()[:2], wd / "results" / "data" / "gsm8k.parquet")
    return wd


def test_template_less_model_runs_through_the_pipeline_path(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """models.<m>.chat_template is accepted by the schema and reaches the runner (run --config --cell uses the
    pipeline's run_args). Catches: the key rejected, dropped from the cell settings, or not hashed; and checks that
    without it the run fails with exit 2 naming the key."""
    wd = _pipeline_workdir(tmp_path, tiny_model_dir, {"bare": True, "bare2": True})
    cfg = {"models": {"bare": {"spec": "local:x", "chat_template": "chatml"}, "bare2": {"spec": "local:y"}},
           "tasks": {"gsm8k": {"n": 1}}, "methods": ["baseline"], "decoding": {"max_new_tokens": 2}}
    (wd / "c.yaml").write_text(json.dumps(cfg))
    monkeypatch.chdir(wd)
    assert cli_main(["--config", "c.yaml", "--cell", "bare/gsm8k/baseline/seed0", "--out", "o.jsonl"]) == 0
    rec = read_records(wd / "o.jsonl")[0]
    assert rec["chat_template"] == "chatml" and rec["status"] == "ok"
    assert cli_main(["--config", "c.yaml", "--cell", "bare2/gsm8k/baseline/seed0", "--out", "o2.jsonl"]) == 2
    assert "chat_template" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ 6. strict extraction


@pytest.mark.parametrize("task,text,ours,strict_ok", [
    ("gsm8k", "so \\boxed{18.0}", True, False),            # strict compares strings: "18.0" != "18"
    ("gsm8k", "The answer is 18. (Checked in step 3.)", True, False),  # strict: last number (3)
    ("gsm8k", "\\boxed{18}", True, True),
    ("aime2024", "\\boxed{204.0}", True, False),           # strict: int("204.0") fails -> wrong
    ("arc_easy", "\\boxed{(B)}", True, False),            # strict: "(b)" != "b"
    ("arc_easy", "\\boxed{\\text{B}}", True, False),      # strict: the box stops at the first "}"
    ("arc_easy", "The answer is B", True, False),         # strict: needs a box
    ("arc_easy", "\\boxed{B}", True, True),
])
def test_strict_extraction_differs_where_the_original_does(task, text, ours, strict_ok):
    """Both settings score as documented in docs/TASKS.md. Catches: strict falling back to our lenient rules (or
    the reverse); each row is a case where the two must differ or agree."""
    t = get_task(task)
    rec = t.load()[0]
    if task == "arc_easy":
        rec = dict(rec, gold="B")
    elif task == "aime2024":
        rec = dict(rec, gold="204")
    else:
        rec = dict(rec, gold="18", extras={**rec["extras"], "final": "18"})
    scored = score_one({"sample_id": rec["id"], "task": task, "gold": rec["gold"], "status": "ok",
                        "final_text": text}, t, {rec["id"]: rec}, extraction="both")
    assert scored["correct"] is ours and scored["strict_correct"] is strict_ok and scored["extraction"] == "both"
    only = score_one({"sample_id": rec["id"], "status": "ok", "final_text": text}, t, {rec["id"]: rec}, "strict")
    assert only["correct"] is strict_ok and "strict_correct" not in only


def test_strict_gsm8k_gold_and_code_block_rules():
    """The original's gold parsing truncates at a thousands comma and its code rule takes only closed ```python
    blocks. Catches: strict using our canonical gold (2125) or our fence/bare-code fallbacks."""
    rec = next(r for r in get_task("gsm8k").load() if "," in r["extras"]["final"])
    assert "," not in rec["gold"] and strict.gsm8k_gold(rec) == rec["extras"]["final"].split(",")[0]
    assert strict.python_block("```py\nx = 1\n```") is None
    assert strict.python_block("def f():\n    return 1") is None
    assert strict.python_block("```python\na = 1\n```\n```Python\nb = 2\n```") == "b = 2"
    assert strict.python_block("```python\nunclosed = 1\n") is None


# ----------------------------------------------------------------------------------------- 7. W_a + rescale as applied


def test_fed_latent_vector_is_w_a_then_rescaled_to_the_input_norm(tiny_lm, monkeypatch):
    """The vector fed back at each latent step equals h·W_a rescaled to the mean input-embedding norm, computed here
    independently in float64 from the weights and a cache-free forward. Catches: W_a transposed (W_a·h), the rescale
    missing, or a rescale to another norm (e.g. the output-embedding norm)."""
    import latentmas.engine.latent as L

    lm = tiny_lm("qwen2")
    al = compute_alignment(lm.model)
    w = al.w_a.double().numpy()
    assert np.abs(w - w.T).max() > 1e-3  # a transposed W_a would give another vector
    emb = lm.model.get_input_embeddings().weight.detach().double().numpy()
    target = np.linalg.norm(emb, axis=1).mean()
    out_norm = np.linalg.norm(lm.model.get_output_embeddings().weight.detach().double().numpy(), axis=1).mean()
    assert abs(target - out_norm) > 1e-3 * target
    fed = []
    real_extend = L.extend

    def spy(model, batch, mask, **kw):
        if kw.get("inputs_embeds") is not None:
            fed.append(kw["inputs_embeds"][:, 0, :].detach().double().numpy().copy())
        return real_extend(model, batch, mask, **kw)

    monkeypatch.setattr(L, "extend", spy)
    ids = encode(lm.tokenizer, "What is two plus three?")
    batch = SequenceBatch.empty(lm.model, 1, lm.device)
    p_ids, p_mask = left_pad([ids], lm.pad_token_id, lm.device)
    hidden = extend(lm.model, batch, p_mask, input_ids=p_ids, want="hidden")
    latent_rollout(lm.model, batch, hidden, 2, LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype), "a")
    assert len(fed) == 2
    # independent: full forwards without a cache, over the prompt embeddings + the vectors fed so far
    inputs = torch.tensor(emb[ids], dtype=torch.float32)[None]
    for step in range(2):
        with torch.no_grad():
            h = lm.model.base_model(inputs_embeds=inputs).last_hidden_state[0, -1].double().numpy()
        x = h @ w
        ref = x * (target / np.linalg.norm(x))
        np.testing.assert_allclose(fed[step][0], ref, rtol=2e-4, atol=2e-4 * target)
        inputs = torch.cat([inputs, torch.tensor(fed[step], dtype=torch.float32)[None]], dim=1)


# -------------------------------------------------------------------------------------- 8. TextMAS really passes text


@pytest.mark.parametrize("arch", ["sequential", "hierarchical"])
def test_text_mas_receiver_prompt_contains_sender_text(tiny_lm, monkeypatch, arch):
    """Non-final agents 'say' chosen texts; every receiver's rendered prompt contains exactly the texts of the agents
    it sees, and changing a sender's text changes the receiver's input. Catches: text_mas passing nothing (or the
    prompt instead of the decoded text), or passing texts to agents that do not see them."""
    lm = tiny_lm("llama")
    topo = load_topology(arch)
    prompts: dict[str, list[str]] = {}
    real_decode_agent = M._decode_agent
    real_render = M.render_chat

    def run(variant: str) -> dict[str, str]:
        prompts.clear()

        def render(tok, messages, think=None):
            text = real_render(tok, messages, think)
            prompts.setdefault("_order", []).append(text)
            return text

        def decode_agent(lm_, batch, ps, settings, name, gens, alive):
            agent = next(a for a in topo.agents if a.name == name)
            if agent.final:
                return real_decode_agent(lm_, batch, ps, settings, name, gens, alive)
            said = encode(lm_.tokenizer, f"<<{name} says {variant}>>")
            return DecodeResult(tokens=[said] * len(ps), nonfinite_at=[None] * len(ps))

        monkeypatch.setattr(M, "render_chat", render)
        monkeypatch.setattr(M, "_decode_agent", decode_agent)
        s = M.MethodSettings("text_mas", decode=DecodeSettings(max_new_tokens=2))
        M.run_batch(lm, topo, [M.SampleInput("x", "Q?", "box it", 0)], s)
        return dict(zip([a.name for a in topo.agents], prompts["_order"]))

    one, two = run("one"), run("two")
    for agent in topo.agents:
        for other in topo.agents:
            if other.final:
                continue
            shown = f"<<{other.name} says one>>" in one[agent.name]
            assert shown == (other.name in agent.sees), (agent.name, other.name)
        assert (one[agent.name] != two[agent.name]) == bool(agent.sees)


# --------------------------------------------------------------------- 9. hierarchical and realign off, end to end


@pytest.mark.parametrize("method,extra", [("baseline", ()), ("text_mas", ()), ("latent_mas", ()),
                                          ("latent_mas", ("--no-realign",))])
def test_hierarchical_and_realign_off_end_to_end(tiny_model_dir, tmp_path, method, extra):
    """`latentmas run --arch hierarchical` for every method (and latent_mas with realign off) writes complete records
    whose agents are the topology's. Catches: the hierarchical path or realign off broken or silently sequential."""
    model = tiny_model_dir("qwen2")
    out = tmp_path / "h.jsonl"
    assert cli_main(_run_args(model, out, "--arch", "hierarchical", "--align-file", str(tmp_path / "wa.st"), *extra,
                              method=method)) == 0
    rec = read_records(out)[0]
    names = [a["name"] for a in rec["agents"]]
    if method == "baseline":
        assert rec["arch"] is None and len(names) == 1
    else:
        assert rec["arch"] == "hierarchical" and names == ["math", "science", "code", "summarizer"]
    assert rec["status"] == "ok"
    if method == "latent_mas":
        assert rec["realign"] is (not extra) and (rec["ridge_lambda"] is None) == bool(extra)
        assert all(a["latent_steps"] == 1 for a in rec["agents"][:3])
        assert (tmp_path / "wa.st").exists() != bool(extra)  # realign off never computes W_a


# ------------------------------------------------------------------ 10. hand-off beyond batch 1 through extend + decode


def test_batched_extend_and_decode_equal_independent_forwards(tiny_lm):
    """Two prompt segments of different lengths per sample (batch of 3) then greedy decode, all through the
    production extend + decode; each sample's tokens and last logits equal a cache-free forward over its own
    concatenated tokens. Catches: wrong positions or masks for padded samples, pad columns attended, a batch
    neighbour leaking into a sample."""
    lm = tiny_lm("qwen2")
    tok = lm.tokenizer
    firsts = [encode(tok, t) for t in ("Hi.", "A much longer first segment here.", "Medium one.")]
    seconds = [encode(tok, t) for t in ("And then a long second segment follows.", "Short.", "Two words")]
    batch = SequenceBatch.empty(lm.model, 3, lm.device)
    ids, mask = left_pad(firsts, lm.pad_token_id, lm.device)
    extend(lm.model, batch, mask, input_ids=ids, want="hidden")
    ids, mask = left_pad(seconds, lm.pad_token_id, lm.device)
    logits = extend(lm.model, batch, mask, input_ids=ids, want="logits")
    res = decode(lm.model, batch, logits, DecodeSettings(max_new_tokens=6), eos_ids=[-1], pad_id=lm.pad_token_id,
                 agent="a")
    assert len({len(firsts[i]) + len(seconds[i]) for i in range(3)}) == 3
    for i in range(3):
        seq = firsts[i] + seconds[i] + res.tokens[i]
        with torch.no_grad():
            ref = lm.model(input_ids=torch.tensor([seq])).logits[0]
        n_ctx = len(firsts[i]) + len(seconds[i])
        expected = ref[n_ctx - 1: n_ctx - 1 + len(res.tokens[i])].argmax(dim=-1).tolist()
        assert res.tokens[i] == expected, i
        torch.testing.assert_close(logits[i], ref[n_ctx - 1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- 11. sliding-window models


def test_sliding_window_batches_are_refused_once_pads_enter_the_window(tiny_model_dir, tmp_path):
    """Gemma-3-style sliding window (8 positions here): a padded batch longer than the window is refused with a
    clear error; batch 1 (no pad columns) runs, and so does a padded batch that stays inside the window. Catches: a
    sample silently seeing fewer of its own tokens because its neighbours' pads fill its window."""
    folder = _copy_model(tiny_model_dir("gemma3"), tmp_path / "sw", config_edit={"sliding_window": 8})
    lm = load_model(str(folder), dtype="float32", device="cpu")
    short, long_ = encode(lm.tokenizer, "ab"), encode(lm.tokenizer, "abcdefghijkl")
    batch = SequenceBatch.empty(lm.model, 2, lm.device)
    ids, mask = left_pad([short, encode(lm.tokenizer, "abcd")], lm.pad_token_id, lm.device)
    extend(lm.model, batch, mask, input_ids=ids, want="logits")  # 4 columns: inside the window
    batch = SequenceBatch.empty(lm.model, 2, lm.device)
    ids, mask = left_pad([short, long_], lm.pad_token_id, lm.device)
    with pytest.raises(SlidingWindowBatchError, match="batch size 1"):
        extend(lm.model, batch, mask, input_ids=ids, want="logits")
    alone = SequenceBatch.empty(lm.model, 1, lm.device)
    ids, mask = left_pad([long_], lm.pad_token_id, lm.device)
    extend(lm.model, alone, mask, input_ids=ids, want="logits")
    # a row left alone after its neighbour was retired (kv.keep_rows) still carries the neighbour's pad columns
    pair = SequenceBatch.empty(lm.model, 2, lm.device)
    ids, mask = left_pad([short, encode(lm.tokenizer, "abcd")], lm.pad_token_id, lm.device)
    extend(lm.model, pair, mask, input_ids=ids, want="logits")
    keep_rows(pair, torch.tensor([0]))
    assert pair.batch_size == 1 and not bool(pair.attention_mask.all())
    ids, mask = left_pad([encode(lm.tokenizer, "efghij")], lm.pad_token_id, lm.device)
    with pytest.raises(SlidingWindowBatchError, match="batch size 1"):
        extend(lm.model, pair, mask, input_ids=ids, want="logits")


def test_gpqa_source_order_option(tmp_path):
    """A GPQA file in the original's layout (fingertap/GPQA-Diamond: options inside the question, answer a letter)
    is shown as it is, so the options keep the source's order and letters; the official CSV layout keeps our
    hashed order. Catches: embedded-layout options re-ordered or re-lettered (the gold letter would then be wrong)."""
    task = get_task("gpqa_diamond")
    rows = [{"question": "Which is heavier?\nA) lead\nB) feather\nC) air\nD) foam", "answer": "A"},
            {"question": "Pick the gas.\n(A) iron\n(B) stone\n(C) wood\n(D) helium", "answer": "(D)"}]
    f = tmp_path / "gpqa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = task.load(f)
    assert [r["gold"] for r in recs] == ["A", "D"]
    assert task.user_prompt(recs[0]) == rows[0]["question"]
    assert recs[1]["choices"] == ["iron", "stone", "wood", "helium"]
    assert task.score("so \\boxed{D}", recs[1]).correct
    official = task.normalise({"Question": "Q?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
                               "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}, 0, "x row 2")
    assert official["choices"][official["extras"]["order"].index(0)] == "right"


def test_score_cli_extraction_both_writes_strict_fields(tmp_path):
    """`latentmas score --extraction both` keeps ours as prediction/correct and adds the strict_* keys; a failed
    record is failed both ways. Catches: the flag not reaching score_one, or strict overwriting ours."""
    from latentmas.eval.scoring import cli_main as score_main

    data = get_task("gsm8k").load()[:2]
    recs = [{"sample_id": data[0]["id"], "task": "gsm8k", "gold": data[0]["gold"], "status": "ok",
             "final_text": f"The answer is {data[0]['gold']}. Step 2 done."},
            {"sample_id": data[1]["id"], "task": "gsm8k", "gold": data[1]["gold"], "status": "failed",
             "error": "boom", "final_text": ""}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert score_main([str(src), "--extraction", "both", "--out", str(tmp_path / "out.jsonl")]) == 0
    ok, failed = read_records(tmp_path / "out.jsonl")
    assert (ok["correct"], ok["strict_correct"], ok["strict_prediction"]) == (True, False, "2")
    assert failed["strict_reason"].startswith("inference_failed") and failed["extraction"] == "both"
