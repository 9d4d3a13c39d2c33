"""Read a model's input embedding and output head straight from its safetensors files, nothing else.

Why: W_a depends only on those two matrices. Loading the whole model a second time to get them costs a full copy of
the weights (about 56 GB in float32 for a 14B model, next to the inference copy). Here the tensor names come from
the model's own class, instantiated with empty (meta) parameters from ``config.json`` (so no architecture is
hard-coded), and rows are read in chunks with ``safe_open(...).get_slice``: memory is one chunk, not the vocabulary.

* sharded checkpoints: ``model.safetensors.index.json``'s ``weight_map`` says which file holds which tensor;
* tied heads: the model class ties ``lm_head`` to the embedding (or the head tensor is absent from the files);
* scaling inside the embedding layer (Gemma-3's √d): the layer is run on two probe rows (ones and twos) to read its
  per-dimension scale, and must be linear in its weight (checked) — the effective input embeddings are then
  ``raw_row · scale`` in float32, the same arithmetic the layer does.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class WeightFileError(RuntimeError):
    """The folder has no safetensors weights we can read the embedding/head from; the message says why."""


def _weight_map(model_dir: Path) -> dict[str, Path]:
    index = model_dir / INDEX_FILE
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / fname for name, fname in wm.items()}
    single = model_dir / SINGLE_FILE
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    raise WeightFileError(f"{model_dir}: neither {INDEX_FILE} nor {SINGLE_FILE} (only safetensors are read)")


def _resolve(name: str, available: dict[str, Path]) -> str | None:
    """The checkpoint key for a module parameter name: exact, else the unique key ending in its longest suffix."""
    if name in available:
        return name
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        suffix = "." + ".".join(parts[i:])
        hits = [k for k in available if k.endswith(suffix)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None
    return None


def _empty_model(model_dir: Path):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (e.g. embed_scale) real
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config leaves tying to loading; the config decides whether the head is the embedding
    return model


def _probe_scale(embedding: torch.nn.Module, d: int) -> torch.Tensor:
    """[d] float32: what the layer multiplies a weight row by (1 for a plain nn.Embedding)."""
    probe = copy.deepcopy(embedding)
    probe.weight = torch.nn.Parameter(torch.stack([torch.ones(d), 2 * torch.ones(d)]), requires_grad=False)
    if hasattr(probe, "padding_idx"):
        probe.padding_idx = None
    with torch.no_grad():
        out = probe(torch.tensor([0, 1])).to(torch.float32)
    if not torch.allclose(out[1], 2 * out[0], rtol=1e-6, atol=0):
        raise WeightFileError(f"{type(embedding).__name__} is not a (scaled) lookup of its weight rows; "
                              "W_a needs the loaded model for it (latentmas align --from-model)")
    return out[0]


@dataclass
class EmbeddingAndHead:
    """Row access to the two matrices W_a needs, without loading anything else."""

    embed_name: str
    head_name: str
    files: dict[str, Path]
    tied: bool
    vocab: int
    d: int
    scale: torch.Tensor  # [d] float32, applied by the embedding layer
    _handles: dict = field(default_factory=dict, repr=False)

    def _rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        path = self.files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path].get_slice(name)[start:stop]

    def raw_embedding_rows(self, start: int, stop: int) -> torch.Tensor:
        return self._rows(self.embed_name, start, stop)

    def effective_embedding_rows(self, start: int, stop: int) -> torch.Tensor:
        """float32 rows of what the embedding layer outputs (weight row × the layer's scale)."""
        return self.raw_embedding_rows(start, stop).to(torch.float32) * self.scale

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        return self._rows(self.head_name, start, stop)

    def sampled_rows(self, which: str, idx: list[int]) -> torch.Tensor:
        read = self.raw_embedding_rows if which == "embed" else self.head_rows
        return torch.cat([read(i, i + 1) for i in idx])


def locate(model_dir: str | Path) -> EmbeddingAndHead:
    """Find the embedding and head tensors of a model folder (names from the model class, files from the index)."""
    model_dir = Path(model_dir)
    available = _weight_map(model_dir)
    model = _empty_model(model_dir)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None:
        raise WeightFileError(f"{model_dir}: {type(model).__name__} has no output head; it is not a causal LM")
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    embed_key = next((k for n in names.get(id(emb.weight), []) if (k := _resolve(n, available))), None)
    if embed_key is None:
        raise WeightFileError(f"{model_dir}: no checkpoint tensor for the input embedding "
                              f"({names.get(id(emb.weight))}) among {len(available)} tensors")
    tied = head.weight is emb.weight
    head_key = None if tied else next((k for n in names.get(id(head.weight), []) if (k := _resolve(n, available))),
                                      None)
    if head_key is None and not tied:
        raise WeightFileError(f"{model_dir}: the model is untied but its output head "
                              f"({names.get(id(head.weight))}) is not in the checkpoint")
    vocab, d = emb.weight.shape
    if head.weight.shape != emb.weight.shape:
        raise WeightFileError(f"{model_dir}: head {tuple(head.weight.shape)} and embedding {tuple(emb.weight.shape)} "
                              "differ in shape; W_a needs the loaded model for it (latentmas align --from-model)")
    return EmbeddingAndHead(embed_key, embed_key if tied else head_key, available, tied, int(vocab), int(d),
                            _probe_scale(emb, int(d)))
