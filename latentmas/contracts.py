"""The contracts every layer shares: names, file layout and record schemas, each defined once.

The runner, the scorer, the aggregator, the figures and ``workflow/rules/common.smk`` import these instead of
spelling a task name, a method or a file name themselves; the JSON Schemas beside this module (package data) say
what a record is.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = PACKAGE_DIR / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"

# ---------------------------------------------------------------------------------------------------------------------
# Controls and ablations of latent_mas (docs/CONTROLS.md). Each control is a first-class cell: config `controls:`,
# `latentmas run` flags, its own variant name (suffix `-<control>`) and a record field `control` that the tables key on.
# ---------------------------------------------------------------------------------------------------------------------
# Names a config lists under `controls:`; each runs beside every latent_mas cell of the grid.
CONTROLS = (
    "no_transfer",            # the final agent gets no memory (decodes from its own prompt alone)
    "single_matched",         # one agent (the final agent's prompt) thinks the team's total latent steps, then answers
    "map_identity",           # beside a realign cell: the same cell with realign off (identity map)
    "map_random_orthogonal",  # a seeded random orthogonal map instead of W_a
    "map_random_spectrum",    # a seeded random map with W_a's singular values
    "keep_random",            # memory budget: keep a seeded random share of the handed-over positions
    "keep_recent",            # ... the most recent share
    "keep_knn_top",           # ... kNN-LatentMAS's rule: the share most similar to the receiving prompt
    "keep_knn_bottom",        # ... the least similar share (kNN-LatentMAS's "random k%" arm is keep_random)
    "scope_handoff",          # memory policies truncate after every hand-off (the original code), not only at the end
)
# The latent map of a latent_mas cell: realign on = ridge, off = identity; the random ones are controls.
MAPPERS = ("ridge", "identity", "random_orthogonal", "random_spectrum")
# How a memory budget picks the handed-over positions it keeps (`keep_<rule>` controls, `latentmas run --keep-rule`).
KEEP_RULES = ("random", "recent", "knn_top", "knn_bottom")
# Where a memory policy (previous / latent_only) is applied: only when building the final agent's view (ours, the
# default) or after every hand-off (the original code; its latent_only then keeps only the last agent's latents).
MEMORY_SCOPES = ("final", "handoff")
MEMORY_POLICIES = ("all", "previous", "latent_only")


def control_name(no_transfer: bool = False, single_matched: bool = False, mapper: str | None = None,
                 keep_fraction: float = 1.0, keep_rule: str = "random", memory_scope: str = "final") -> str | None:
    """The name a control run carries in records (field ``control``) and in its variant (suffix); None = no control.

    ``keep0.6`` of rule ``knn_top`` is ``keep60_knn_top``; several controls at once are joined by ``-``.
    """
    parts = []
    if no_transfer:
        parts.append("no_transfer")
    if single_matched:
        parts.append("single_matched")
    if mapper in ("random_orthogonal", "random_spectrum"):
        parts.append(f"map_{mapper}")
    if keep_fraction < 1.0:
        parts.append(f"keep{100 * keep_fraction:g}_{keep_rule}")
    if memory_scope == "handoff":
        parts.append("scope_handoff")
    return "-".join(parts) or None
