"""W_a from the weight files alone (no second model load): equal to the loaded-model solve, for tied, untied, scaled
and sharded checkpoints; the align CLI never loads the model when the files can be read."""
from __future__ import annotations

import json

import pytest
import torch

from latentmas.engine.alignment import (compute_alignment, compute_alignment_from_files, load_alignment,
                                        weight_fingerprint)
from latentmas.engine.weight_files import INDEX_FILE, locate


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_files_path_equals_loaded_model_solve(tiny_model_dir, tiny_lm, arch):
    """Same arithmetic, so bit-identical W_a and target norm and the same fingerprint. Catches reading the raw
    Gemma embedding without its √d scale (target norm off by √d), the wrong head for untied Qwen2 (W_a differs),
    and a fingerprint that differs between the two paths (every cached file would be recomputed)."""
    lm = tiny_lm(arch)
    ref = compute_alignment(lm.model)
    got = compute_alignment_from_files(tiny_model_dir(arch))
    assert torch.equal(got.w_a, ref.w_a)
    assert got.target_norm == ref.target_norm
    assert got.fingerprint == ref.fingerprint == weight_fingerprint(lm.model)


def test_tied_and_untied_heads_are_told_apart(tiny_model_dir):
    """Catches treating an untied head as tied (Qwen2.5 GGUFs are untied) or the reverse."""
    assert locate(tiny_model_dir("llama")).tied and locate(tiny_model_dir("gemma3")).tied
    qwen = locate(tiny_model_dir("qwen2"))
    assert not qwen.tied and qwen.head_name == "lm_head.weight" and qwen.embed_name != qwen.head_name


def test_sharded_checkpoint_via_index(tiny_lm, tmp_path):
    """A checkpoint split over several files must be read through the index's weight_map. Catches reading only the
    first shard (the head would be missing) and mixing shards up (different W_a)."""
    lm = tiny_lm("qwen2")
    lm.model.save_pretrained(tmp_path, max_shard_size="40KB")
    lm.tokenizer.save_pretrained(tmp_path)
    wm = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"]
    assert len(set(wm.values())) > 1 and wm["lm_head.weight"] != wm["model.embed_tokens.weight"]
    assert torch.equal(compute_alignment_from_files(tmp_path).w_a, compute_alignment(lm.model).w_a)


def test_align_cli_reads_files_and_reuses_the_cache_without_loading_the_model(tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    """Catches a second full model load in the align job (the 56 GB problem on a 14B model) and a cache that is
    recomputed although it matches the weight files."""
    import latentmas.engine.alignment as A
    import latentmas.engine.models as M

    def no_model(*a, **k):
        raise AssertionError("the align job loaded the whole model")

    monkeypatch.setattr(M, "load_model", no_model)
    out = tmp_path / "w.safetensors"
    assert A.cli_main(["--model", str(tiny_model_dir("qwen2")), "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["source"] == "weight-files" and report["compute_s"] >= 0 and report["peak_mem_mb"] > 0
    first = load_alignment(out)

    def no_recompute(*a, **k):
        raise AssertionError("recomputed although the cached file matches")

    monkeypatch.setattr(A, "compute_alignment_from_files", no_recompute)
    assert A.cli_main(["--model", str(tiny_model_dir("qwen2")), "--device", "cpu", "--out", str(out)]) == 0
    assert torch.equal(load_alignment(out).w_a, first.w_a)
    with pytest.raises(AssertionError, match="recomputed"):  # another λ is another W_a
        A.cli_main(["--model", str(tiny_model_dir("qwen2")), "--ridge-lambda", "1e-3", "--out", str(out)])
