"""Controls of latent_mas (docs/CONTROLS.md): each test names the wrong control it would catch."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from latentmas.contracts import CONFIG_SCHEMA, CONTROLS, KEEP_RULES
from latentmas.engine.alignment import compute_alignment
from latentmas.engine.controls import MemoryControl, final_view, matched_latent_budget
from latentmas.engine.decoding import DecodeSettings, decode
from latentmas.engine.kv import SequenceBatch, extend, left_pad
from latentmas.engine.latent import LatentMapper
from latentmas.engine.mappers import map_matrix, random_orthogonal, random_with_spectrum
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.models import encode, render_chat
from latentmas.engine.topology import load_topology


def _inputs(n):
    from latentmas.eval.tasks import get_task

    task = get_task("gsm8k")
    return [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, 100 + i)
            for i, r in enumerate(task.load()[:n])]


def _mapper(lm):
    al = compute_alignment(lm.model)
    return LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)


def _settings(steps=2, memory="all", max_new=5, **kw):
    return MethodSettings(method="latent_mas", latent_steps=steps, memory=memory, decode=DecodeSettings(max_new, True),
                          **kw)


def _observe():
    seen: dict[str, SequenceBatch] = {}

    def observe(name, batch):
        seen[name] = copy.deepcopy(batch)  # the agent goes on to extend it

    return seen, observe


def _final_prompt(lm, topo, s):
    tok = lm.tokenizer
    return encode(tok, render_chat(tok, topo.render(topo.final_agent, s.question, s.answer_instruction, "latent")))


# ---------------------------------------------------------------------------------------------------------------------
# 1. no transfer


def test_no_transfer_final_agent_attends_to_zero_predecessor_positions(tiny_lm):
    """Catches a no-transfer control that still hands (some of) the shared cache to the final agent: the cache the
    final agent decodes on holds no predecessor position, and its answer equals decoding its prompt on a fresh cache."""
    lm = tiny_lm("qwen2")
    topo = load_topology("sequential")
    samples = _inputs(2)
    seen, observe = _observe()
    outs = run_batch(lm, topo, samples, _settings(control=MemoryControl(transfer=False)), _mapper(lm), observe=observe)
    final = seen[topo.final_agent.name]
    assert final.length == 0 and final.segments == [] and final.cache.get_seq_length() == 0
    assert int(final.next_position.max()) == 0  # a fresh agent: positions start at 0
    assert seen["refiner"].length > 0  # ... while the team before it ran and built memory
    for s, o in zip(samples, outs):
        mem = o.agents[-1]["memory"]
        assert mem["kept"] == 0 and mem["kept_bytes"] == 0 and mem["handed_over"] > 0
        assert [a["latent_steps"] for a in o.agents] == [2, 2, 2, 0]  # the agents ran exactly as in latent_mas
        batch = SequenceBatch.empty(lm.model, 1, lm.device)
        ids, mask = left_pad([_final_prompt(lm, topo, s)], lm.pad_token_id, lm.device)
        logits = extend(lm.model, batch, mask, input_ids=ids, want="logits")
        ref = decode(lm.model, batch, logits, DecodeSettings(5, True), lm.eos_token_ids, lm.pad_token_id, "x")
        assert o.final_text == lm.tokenizer.decode(ref.tokens[0], skip_special_tokens=True)


def test_full_transfer_records_what_was_handed_over(tiny_lm):
    """Catches a hand-off record that does not measure the cache: with memory all the final agent keeps every
    handed-over position, and the bytes are positions x (2 x layers x kv heads x head dim x 4 bytes)."""
    lm = tiny_lm("qwen2")
    topo = load_topology("sequential")
    seen, observe = _observe()
    out = run_batch(lm, topo, _inputs(1), _settings(), _mapper(lm), observe=observe)[0]
    cfg = lm.model.config
    per_pos = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    mem = out.agents[-1]["memory"]
    n_real = sum(a["input_tokens"] + a["latent_steps"] for a in out.agents[:-1])
    assert mem == {"handed_over": n_real, "kept": n_real, "kept_bytes": n_real * per_pos}
    assert seen[topo.final_agent.name].real_tokens().tolist() == [n_real]


# ---------------------------------------------------------------------------------------------------------------------
# 2. single agent, matched latent budget


@pytest.mark.parametrize("arch", ["sequential", "hierarchical"])
def test_matched_budget_equals_the_teams_total_latent_steps(tiny_lm, arch):
    """Catches a matched-budget control that thinks for one agent's steps (or counts the final agent): the single
    agent's latent steps equal the latent_mas team's total on the same cell, and only the final agent's prompt runs."""
    lm = tiny_lm("qwen2")
    topo = load_topology(arch)
    s = _inputs(1)[0]
    mapper = _mapper(lm)
    team = run_batch(lm, topo, [s], _settings(steps=3), mapper)[0]
    single = run_batch(lm, topo, [s], _settings(steps=3, single_matched=True), mapper)[0]
    total = sum(a["latent_steps"] for a in team.agents)
    assert matched_latent_budget(topo, 3) == total == 3 * (len(topo.agents) - 1)
    assert [a["name"] for a in single.agents] == [topo.final_agent.name]
    assert single.agents[0]["latent_steps"] == total and len(single.agents[0]["latent"]["norms"]) == total
    assert single.agents[0]["input_tokens"] == 2 * len(_final_prompt(lm, topo, s))  # read before and after thinking
    assert single.error is None


def _greedy_from_embeds(lm, emb, n):
    """Greedy tokens by full forwards over ``emb`` ([1, T, d]) + the tokens chosen so far (independent of the cache)."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(lm.model(inputs_embeds=emb).logits[0, -1].argmax())
            if nxt in lm.eos_token_ids:
                break
            out.append(nxt)
            emb = torch.cat([emb, lm.model.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_matched_single_answers_after_rereading_its_prompt(tiny_lm, arch):
    """Catches answering without the thoughts (prompt only) or from the wrong place: the answer is the full model's
    greedy continuation of prompt + the latent embeddings the agent fed itself + the prompt again."""
    lm = tiny_lm(arch)
    topo = load_topology("sequential")
    s = _inputs(1)[0]
    mapper = _mapper(lm)
    out = run_batch(lm, topo, [s], _settings(steps=1, max_new=4, single_matched=True), mapper)[0]
    ids = torch.tensor([_final_prompt(lm, topo, s)])
    prompt_emb = lm.model.get_input_embeddings()(ids)
    emb = prompt_emb
    with torch.no_grad():
        for _ in range(3):  # budget = 1 step x 3 non-final agents
            h = lm.model.base_model(inputs_embeds=emb).last_hidden_state[:, -1, :]
            vec, _ = mapper(h)
            emb = torch.cat([emb, vec[:, None, :]], dim=1)
        thought = lm.model(inputs_embeds=torch.cat([emb, prompt_emb], dim=1)).logits[0, -1]
        plain = lm.model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(thought, plain, atol=1e-3)  # the thoughts change what the agent reads
    ref = _greedy_from_embeds(lm, torch.cat([emb, prompt_emb], dim=1), 4)
    assert out.final_text == lm.tokenizer.decode(ref, skip_special_tokens=True)
    assert out.agents[0]["input_tokens"] == 2 * ids.shape[1]


# ---------------------------------------------------------------------------------------------------------------------
# 3. mapper variants


def test_random_orthogonal_map_is_orthogonal_and_seeded():
    """Catches a random map that is not orthogonal (a plain Gaussian) or not reproducible / not seed-dependent."""
    q = random_orthogonal(32, seed=5)
    assert torch.allclose(q @ q.T, torch.eye(32, dtype=q.dtype), atol=1e-12)
    assert torch.equal(q, random_orthogonal(32, seed=5))
    assert not torch.allclose(q, random_orthogonal(32, seed=6))
    assert not torch.allclose(q, torch.eye(32, dtype=q.dtype))


def test_random_spectrum_map_has_w_a_singular_values_and_is_seeded(tiny_lm):
    """Catches a spectrum control that keeps W_a's directions (returns W_a), loses its spectrum, or ignores the seed."""
    lm = tiny_lm("qwen2")
    w_a = compute_alignment(lm.model).w_a
    m = random_with_spectrum(w_a, seed=1)
    want = torch.linalg.svdvals(w_a.double())
    assert torch.allclose(torch.linalg.svdvals(m), want, rtol=1e-9, atol=1e-12)
    assert torch.equal(m, random_with_spectrum(w_a, seed=1))
    assert not torch.allclose(m, random_with_spectrum(w_a, seed=2))
    assert not torch.allclose(m, w_a.double(), atol=1e-3 * float(want.max()))
    assert map_matrix("identity", 64, w_a, 0) is None
    assert map_matrix("ridge", 64, w_a, 0) is w_a
    with pytest.raises(ValueError, match="needs W_a"):
        map_matrix("random_spectrum", 64, None, 0)


def test_every_map_gets_the_same_norm_rescale(tiny_lm):
    """Catches a mapper variant that skips the rescale: every mapped vector has the target norm."""
    lm = tiny_lm("qwen2")
    al = compute_alignment(lm.model)
    h = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    for kind in ("ridge", "identity", "random_orthogonal", "random_spectrum"):
        mapper = LatentMapper(al.target_norm, map_matrix(kind, 64, al.w_a, 0), lm.device, lm.dtype)
        vec, _ = mapper(h)
        assert torch.allclose(vec.norm(dim=-1), torch.full((3,), al.target_norm), rtol=1e-5), kind


# ---------------------------------------------------------------------------------------------------------------------
# 4. memory budget


def _shared_cache(lm, topo, samples, memory="all"):
    seen, observe = _observe()
    run_batch(lm, topo, samples, _settings(steps=3, memory=memory, max_new=1), _mapper(lm), observe=observe)
    return seen[topo.final_agent.name]


@pytest.mark.parametrize("rule", KEEP_RULES)
def test_memory_budget_keeps_exactly_the_requested_share(tiny_lm, rule):
    """Catches a budget that keeps a share of the padded columns instead of each sample's real positions, rounds
    differently per sample, or depends on the batch: every sample keeps round(0.6 x its handed-over positions), the
    same ones alone as in a batch, and its kept bytes are kept positions x bytes per position."""
    lm = tiny_lm("qwen2")
    topo = load_topology("sequential")
    samples = _inputs(3)
    shared = _shared_cache(lm, topo, samples)
    prompts = [_final_prompt(lm, topo, s) for s in samples]
    ctl = MemoryControl(keep_fraction=0.6, keep_rule=rule)
    view, mem = final_view(lm, shared, "all", ctl, "refiner", prompts, [s.seed for s in samples])
    real = shared.attention_mask.sum(dim=1).tolist()
    assert len(set(real)) > 1  # samples of different lengths: padding is really there
    for b, n in enumerate(real):
        want = int(0.6 * n + 0.5)
        assert mem[b]["handed_over"] == n and mem[b]["kept"] == want == int(view.attention_mask[b].sum())
        assert mem[b]["kept_bytes"] == want * mem[0]["kept_bytes"] // mem[0]["kept"]
    for b, s in enumerate(samples):  # the same kept positions when the sample runs alone
        alone = _shared_cache(lm, topo, [s])
        v1, m1 = final_view(lm, alone, "all", ctl, "refiner", [prompts[b]], [s.seed])
        assert m1[0] == mem[b]
        assert torch.allclose(_kept_keys(v1, 0), _kept_keys(view, b), atol=1e-4)


def _kept_keys(view, b) -> torch.Tensor:
    """[kept, H*hd]: the layer-0 keys a sample kept, in order (the same positions give the same keys)."""
    cols = torch.nonzero(view.attention_mask[b]).flatten()
    return view.cache.layers[0].keys[b][:, cols, :].permute(1, 0, 2).flatten(1)


def test_budget_rules_choose_what_they_say(tiny_lm):
    """Catches rules that select the wrong positions: recent keeps the last real positions; knn_top and knn_bottom at
    50% split the positions (top = the highest cosine scores); random depends on the sample's seed."""
    lm = tiny_lm("qwen2")
    topo = load_topology("sequential")
    s = _inputs(1)[0]
    shared = _shared_cache(lm, topo, [s])
    prompt = [_final_prompt(lm, topo, s)]
    n = int(shared.attention_mask.sum())

    def kept(rule, frac=0.5, seed=s.seed):
        view, _ = final_view(lm, shared, "all", MemoryControl(keep_fraction=frac, keep_rule=rule), "refiner",
                             prompt, [seed])
        return view

    recent = kept("recent")
    k = int(0.5 * n + 0.5)
    assert recent.length == k and torch.equal(recent.attention_mask, shared.attention_mask[:, n - k:])
    top, bottom = kept("knn_top"), kept("knn_bottom")
    assert top.length + bottom.length == n
    from latentmas.engine.controls import _knn_scores

    scores = _knn_scores(lm, shared, prompt)[0]
    top_keys = top.cache.layers[1].keys[0, :, :, :].permute(1, 0, 2).flatten(1)
    all_keys = shared.cache.layers[1].keys[0].permute(1, 0, 2).flatten(1)
    top_cols = [int((all_keys == row).all(dim=1).nonzero()[0]) for row in top_keys]
    assert sorted(top_cols) == sorted(scores.argsort(descending=True)[:k].tolist())
    r1, r2, r3 = kept("random"), kept("random"), kept("random", seed=s.seed + 1)
    assert torch.equal(r1.cache.layers[0].keys, r2.cache.layers[0].keys)
    assert not torch.equal(r1.cache.layers[0].keys, r3.cache.layers[0].keys)


# ---------------------------------------------------------------------------------------------------------------------
# 5. memory scope


def _agents_in(batch) -> list[tuple[str, str]]:
    """(agent, kind) of the cache's segments, consecutive repeats merged (each latent step is its own segment)."""
    out: list[tuple[str, str]] = []
    for s in batch.segments:
        if not out or out[-1] != (s.agent, s.kind):
            out.append((s.agent, s.kind))
    return out


@pytest.mark.parametrize("memory", ["previous", "latent_only"])
def test_each_scope_truncates_where_it_says(tiny_lm, memory):
    """Catches scopes swapped or ignored: with scope final every non-final agent sees the whole memory and only the
    final view is cut; with scope handoff the cache is cut after every hand-off, so the refiner already sees only the
    critic (previous: its prompt + latents; latent_only: its latents only), and so does the final agent for the
    refiner."""
    lm = tiny_lm("qwen2")
    topo = load_topology("sequential")
    s = _inputs(1)
    mapper = _mapper(lm)
    seen_f, obs_f = _observe()
    run_batch(lm, topo, s, _settings(memory=memory, control=MemoryControl(scope="final")), mapper, observe=obs_f)
    seen_h, obs_h = _observe()
    run_batch(lm, topo, s, _settings(memory=memory, control=MemoryControl(scope="handoff")), mapper, observe=obs_h)
    assert _agents_in(seen_f["refiner"]) == [("planner", "prompt"), ("planner", "latent"), ("critic", "prompt"),
                                             ("critic", "latent")]
    kinds = ("prompt", "latent") if memory == "previous" else ("latent",)
    assert {a for a, _ in _agents_in(seen_h["refiner"])} == {"critic"}
    assert {k for _, k in _agents_in(seen_h["refiner"])} == set(kinds)
    assert {a for a, _ in _agents_in(seen_h["judger"])} == {"refiner"}
    if memory == "previous":  # same final view, different road to it
        assert _agents_in(seen_f["judger"]) == _agents_in(seen_h["judger"])
    else:  # ours keeps every agent's latents, the original only the last agent's
        assert {a for a, _ in _agents_in(seen_f["judger"])} == {"planner", "critic", "refiner"}


# ---------------------------------------------------------------------------------------------------------------------
# pipeline: config -> cells -> run flags -> records


def _grid(**extra):
    from latentmas.pipeline import experiment

    cfg = {"models": {"m": {"spec": "tiny:qwen2"}}, "tasks": {"gsm8k": {"n": 2}}, "methods": ["latent_mas"],
           "latent": {"steps": [2], "realign": [True], "memory": ["all", "previous"]}, **extra}
    return experiment.validate_config(cfg)


def test_schema_lists_exactly_the_contracts_controls():
    """Catches a control added to contracts but not to the config schema (or the reverse)."""
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())
    assert tuple(schema["properties"]["controls"]["items"]["enum"]) == CONTROLS


def test_controls_expand_to_named_cells_beside_every_latent_mas_cell():
    """Catches controls that are not cells of their own, run beside the wrong cells, or ignore the switch."""
    from latentmas.pipeline import experiment

    cfg = _grid(controls=list(CONTROLS), control_keep_fractions=[0.6, 0.25])
    variants = {c["variant"] for c in experiment.expand_cells(cfg).values()}
    assert variants == {
        "latent_mas-sequential-k2-realign", "latent_mas-sequential-k2-realign-mem_previous",
        "latent_mas-sequential-k2-realign-no_transfer", "latent_mas-sequential-k2-realign-single_matched",
        "latent_mas-sequential-k2-norealign", "latent_mas-sequential-k2-norealign-mem_previous",
        "latent_mas-sequential-k2-map_random_orthogonal", "latent_mas-sequential-k2-mem_previous-map_random_orthogonal",
        "latent_mas-sequential-k2-map_random_spectrum", "latent_mas-sequential-k2-mem_previous-map_random_spectrum",
        *{f"latent_mas-sequential-k2-realign{m}-keep{p}_{r}" for m in ("", "-mem_previous") for p in (60, 25)
          for r in KEEP_RULES},
        "latent_mas-sequential-k2-realign-mem_previous-scope_handoff",
    }
    off = _grid(controls=list(CONTROLS), controls_enabled=False)
    assert len(experiment.expand_cells(off)) == 2
    with pytest.raises(experiment.ConfigError, match="controls"):
        _grid(controls=["no_such_control"])


def test_a_control_cell_runs_as_the_pipeline_says_and_records_its_name(tiny_model_dir, tmp_path):
    """Catches a control whose flags do not reach the runner or whose records do not carry the cell's control name
    (then its scores would be pooled with LatentMAS's)."""
    from latentmas.pipeline import experiment
    from latentmas.pipeline.runner import cli_main

    cfg = _grid(controls=["keep_recent", "map_random_orthogonal"])
    for variant, want in [("latent_mas-sequential-k2-realign-keep60_recent", "keep60_recent"),
                          ("latent_mas-sequential-k2-map_random_orthogonal", "map_random_orthogonal")]:
        cell = experiment.get_cell(cfg, f"m/gsm8k/{variant}/seed0")
        assert cell["control"] == want
        settings = experiment.cell_settings(cfg, cell, 0, 1)
        align = tmp_path / "w_a.safetensors" if experiment.needs_align(settings) else None
        args = experiment.run_args(settings, tiny_model_dir("qwen2"), "m", "DATA", align)
        i = args.index("--data")
        del args[i: i + 2]  # the vendored copy of gsm8k
        out = tmp_path / f"{want}.jsonl"
        assert cli_main([*args, "--max-new-tokens", "2", "--out", str(out)]) == 0
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["control"] for r in recs] == [want, want]
        assert all(r["realign"] == cell["realign"] for r in recs)
        if want.startswith("keep"):
            assert all(r["kept_cache_bytes"] == r["agents"][-1]["memory"]["kept_bytes"] > 0 for r in recs)


def test_controls_on_other_methods_are_refused(tiny_model_dir, tmp_path, capsys):
    """Catches a control flag silently ignored on a method it cannot apply to (exit 2, naming it)."""
    from latentmas.pipeline.runner import cli_main

    rc = cli_main(["--model", str(tiny_model_dir("qwen2")), "--task", "gsm8k", "--method", "text_mas",
                   "--no-transfer", "--n", "1", "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2
    assert "no_transfer" in capsys.readouterr().err


def test_controls_on_the_vllm_backend_are_refused_by_the_config():
    """A control cell on a `backend: vllm` model is a config error naming the model and the controls (the vLLM
    prefix rebuilds the full hand-off and would silently drop the control); the same grid without controls, or on
    hf, is valid. Catches: the refusal only at run time, after other jobs already ran."""
    import pytest

    from latentmas.pipeline.experiment import ConfigError

    with pytest.raises(ConfigError) as err:
        _grid(backend="vllm", latent={"steps": [2], "realign": [True], "memory": ["all"]},
                controls=["no_transfer", "single_matched"])
    assert "config.models.m.backend: vllm cannot run the controls ['no_transfer', 'single_matched']" in str(err.value)
    _grid(backend="vllm", latent={"steps": [2], "realign": [True], "memory": ["all"]}, controls=[])
    _grid(backend="hf", latent={"steps": [2], "realign": [True], "memory": ["all"]}, controls=["no_transfer"])
