"""What identifies a cell's records: :class:`CellSpec` and its ``config_hash`` (the resume guard), and each
sample's seed. Kept apart from the runner so the identity a shard is checked against reads in one place."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CellSpec:
    """Everything that determines a cell's results (batch size and device placement deliberately excluded)."""

    model: str
    task: str
    method: str
    arch: str | None
    latent_steps: int | None
    realign: bool | None
    memory: str | None
    seed: int
    greedy: bool
    # the effective sampling knobs (config > the model's generation_config > transformers' fallback); None if greedy
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    max_new_tokens: int
    agent_max_new_tokens: int | None
    think: str  # one of latentmas.engine.models.THINK_MODES
    dtype: str
    ridge_lambda: float | None
    prompt_version: str  # the task's prompt id (version, style, answer-instruction digest)
    chat_template: str | None  # the --chat-template fallback given (None = the tokenizer's own)
    topology_digest: str
    n: int | None
    control: str | None = None  # docs/CONTROLS.md; left out of the hash when None, so older cells keep their hash
    backend: str = "hf"
    decode_graph: str = "eager"  # static/compiled decode steps: equal to eager up to kernel reduction order

    def config_hash(self) -> str:
        fields = asdict(self)
        if fields["control"] is None:
            del fields["control"]
        if fields["backend"] == "hf":  # the reference backend hashes as before the option existed: old shards resume
            del fields["backend"]
        if fields["decode_graph"] == "eager":  # likewise the reference decode loop
            del fields["decode_graph"]
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sample_seed(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "big") >> 1
