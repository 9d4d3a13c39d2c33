"""Linears through oneDNN-packed weights (engine/packed_linear.py) against plain ``F.linear``.

Each test catches a way packing can go wrong and still run: the bias dropped, the weight used transposed, the
output head losing the ``weight`` the lens / W_a / tied embeddings read, a packed model whose greedy answers drift
from the plain one, ``auto`` packing where it was never measured (bf16 on AMX, GPUs), or an impossible request accepted.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentmas.engine.packed_linear import PackedLinear, onednn_available, pack_linears, resolve_linear_kernel

pytestmark = pytest.mark.skipif(not onednn_available(torch.float32), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80, bias=bias)
    packed = PackedLinear(lin, keep_weight=False)
    assert not hasattr(packed, "weight") and (packed.bias is lin.bias)
    for x in (torch.randn(1, 48), torch.randn(7, 48), torch.randn(3, 5, 48), torch.randn(48, 6).t()):  # last: strided
        with torch.no_grad():
            got, want = packed(x), F.linear(x, lin.weight, lin.bias)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (x.shape, (got - want).abs().max())


@pytest.mark.skipif(not onednn_available(torch.bfloat16), reason="oneDNN cannot pack bf16 weights on this CPU")
def test_packed_linear_in_bfloat16_equals_f_linear_and_loads_as_auto_says(tiny_model_dir):
    """bf16 packing (auto on AVX512-BF16 CPUs without AMX): products within bf16 rounding of F.linear's, and
    load_model's auto packs exactly where resolve_linear_kernel says. Catches a bf16 weight packed as another dtype
    (wrong numbers) and a load path that ignores the rule."""
    from latentmas.engine.models import load_model

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96).to(torch.bfloat16)
    packed = PackedLinear(lin, keep_weight=False)
    for x in (torch.randn(1, 64), torch.randn(8, 64), torch.randn(130, 64)):
        x = x.to(torch.bfloat16)
        with torch.no_grad():
            got, want = packed(x).float(), F.linear(x, lin.weight, lin.bias).float()
        assert torch.allclose(got, want, atol=2e-2, rtol=2e-2), (x.shape, (got - want).abs().max())
    lm = load_model(str(tiny_model_dir("qwen2")), dtype="bfloat16", device="cpu")
    assert lm.linear_kernel == resolve_linear_kernel("auto", torch.device("cpu"), torch.bfloat16)
    assert any(isinstance(m, PackedLinear) for m in lm.model.modules()) == (lm.linear_kernel == "onednn")


def test_packed_linear_refuses_another_dtype():
    packed = PackedLinear(torch.nn.Linear(8, 4), keep_weight=False)
    with pytest.raises(TypeError, match="float32 weights"):
        packed(torch.randn(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # the tiny llama ties head and embedding, as Qwen2.5-0.5B does
def test_load_model_packs_on_cpu_float32_and_keeps_the_head_weight(tiny_model_dir, arch):
    """auto on a CPU in float32 packs every linear; the head keeps its weight (the very embedding tensor when tied,
    so W_a's fingerprint, which detects tying, is unchanged) and inner layers drop theirs; logits equal the plain
    model's."""
    from latentmas.engine.alignment import weight_fingerprint
    from latentmas.engine.models import load_model

    plain = load_model(str(tiny_model_dir(arch)), dtype="float32", device="cpu", linear_kernel="aten")
    packed = load_model(str(tiny_model_dir(arch)), dtype="float32", device="cpu")
    assert (plain.linear_kernel, packed.linear_kernel) == ("aten", "onednn")
    n_linear = sum(type(m) is torch.nn.Linear for m in plain.model.modules())
    assert n_linear > 0 and not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.model.modules()) == n_linear
    head = packed.model.get_output_embeddings()
    assert isinstance(head, PackedLinear)
    assert torch.equal(head.weight, plain.model.get_output_embeddings().weight)
    tied = plain.model.get_output_embeddings().weight is plain.model.get_input_embeddings().weight
    assert tied == (arch == "llama") and tied == (head.weight is packed.model.get_input_embeddings().weight)
    assert weight_fingerprint(packed.model) == weight_fingerprint(plain.model)
    assert not hasattr(packed.model.model.layers[0].mlp.up_proj, "weight")
    ids = torch.randint(0, plain.model.config.vocab_size, (3, 9))
    with torch.no_grad():
        a, b = plain.model(input_ids=ids).logits, packed.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_answers_equal_plain_linears(tiny_model_dir, arch):
    """Through run_batch, every method: the packed model's greedy texts and latent norms equal the plain model's."""
    from latentmas.engine.alignment import compute_alignment
    from latentmas.engine.decoding import DecodeSettings
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
    from latentmas.engine.models import load_model
    from latentmas.engine.topology import load_topology

    samples = [SampleInput(f"s{i}", q, "Answer.", i) for i, q in enumerate(["2+2?", "A longer question here?", "Hi"])]
    outs = {}
    for kernel in ("aten", "onednn"):
        lm = load_model(str(tiny_model_dir(arch)), dtype="float32", device="cpu", linear_kernel=kernel)
        al = compute_alignment(lm.model)
        mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
        for method, topo in (("baseline", "single"), ("text_mas", "sequential"), ("latent_mas", "sequential")):
            settings = MethodSettings(method, latent_steps=3, decode=DecodeSettings(12, True))
            outs[kernel, method] = run_batch(lm, load_topology(topo), samples, settings, mapper)
    for method in ("baseline", "text_mas", "latent_mas"):
        plain, packed = outs["aten", method], outs["onednn", method]
        assert [o.final_text for o in packed] == [o.final_text for o in plain], method
        for p, q in zip(plain, packed):
            for a, b in zip(p.agents, q.agents):
                if a["latent"]:
                    assert a["latent"]["norms"] == pytest.approx(b["latent"]["norms"], rel=1e-4)


def test_auto_packs_only_where_measured_and_refuses_the_impossible(monkeypatch):
    from latentmas.engine import packed_linear

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(packed_linear, "onednn_available", lambda dtype: True)  # as on an AMX machine
    monkeypatch.setattr(packed_linear.platform, "machine", lambda: "x86_64")
    assert resolve_linear_kernel("auto", cpu, torch.float32) == "onednn"
    for avx512_bf16, amx, packs in ((True, False, "onednn"), (True, True, "aten"), (False, False, "aten")):
        flags = {"_is_avx512_bf16_supported": avx512_bf16, "_is_amx_tile_supported": amx}
        monkeypatch.setattr(packed_linear, "cpu_supports", flags.__getitem__)
        # bf16 packing measured on AVX512-BF16 (Zen 4); unmeasured on AMX: not packed by default there
        assert resolve_linear_kernel("auto", cpu, torch.bfloat16) == packs, flags
        assert resolve_linear_kernel("auto", cpu, torch.float32) == "onednn", flags
        assert resolve_linear_kernel("auto", cpu, torch.float16) == "aten", flags
    assert resolve_linear_kernel("auto", cpu, torch.float32, "compiled") == "aten"
    with pytest.raises(ValueError, match="decode_graph compiled"):
        resolve_linear_kernel("onednn", cpu, torch.float32, "compiled")
    monkeypatch.setattr(packed_linear.platform, "machine", lambda: "aarch64")
    assert resolve_linear_kernel("auto", cpu, torch.float32) == "aten"  # oneDNN on Arm: unmeasured
    assert resolve_linear_kernel("onednn", cpu, torch.float32) == "onednn"  # asked for: allowed
    monkeypatch.setattr(packed_linear, "onednn_available", lambda dtype: False)
    assert resolve_linear_kernel("auto", cuda, torch.float32) == "aten"
    assert resolve_linear_kernel("aten", cpu, torch.float32) == "aten"
    with pytest.raises(ValueError, match="needs a CPU"):
        resolve_linear_kernel("onednn", cuda, torch.float32)
    with pytest.raises(ValueError, match="unknown linear kernel"):
        resolve_linear_kernel("mkl", cpu, torch.float32)


def test_load_model_keeps_plain_linears_under_compiled_and_names_bad_requests(tiny_model_dir):
    from latentmas.engine.models import ModelLoadError, load_model

    path = str(tiny_model_dir("qwen2"))
    assert load_model(path, dtype="float32", device="cpu", decode_graph="compiled").linear_kernel == "aten"
    with pytest.raises(ModelLoadError, match="decode_graph compiled"):
        load_model(path, dtype="float32", device="cpu", decode_graph="compiled", linear_kernel="onednn")
    with pytest.raises(ModelLoadError, match="unknown linear kernel"):
        load_model(path, dtype="float32", device="cpu", linear_kernel="fast")


# the config key reaching jobs (and refused with compiled graphs): tests/test_static_decode.py


def test_runner_names_the_kernel_in_the_record_and_resumes_across_kernels(tiny_model_dir, tmp_path):
    """The record's device says which kernel computed it; the kernel is not in the cell hash (reduction order only),
    so a shard started with packed linears resumes under plain ones instead of being refused."""
    import json

    from latentmas.pipeline.runner import cli_main

    out = tmp_path / "a.jsonl"
    base = ["--model", str(tiny_model_dir("qwen2")), "--task", "gsm8k", "--method", "baseline", "--greedy",
            "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--out", str(out)]
    assert cli_main(base + ["--n", "2"]) == 0
    out.write_text(out.read_text().splitlines(keepends=True)[0])  # as if stopped after the first sample
    assert cli_main(base + ["--n", "2", "--linear-kernel", "aten"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1]
    assert recs[0]["device"].endswith(", onednn linears") and "linears" not in recs[1]["device"]
    assert recs[0]["config_hash"] == recs[1]["config_hash"]
