"""Display order and labels shared by the tables and the figures (one place, so both read the same).

Order: models alphabetically, then tasks, methods and archs in their :mod:`latentmas.contracts` order (unknown names
after the known ones, alphabetically), latent steps ascending, realign on before off, memory ``all`` first.
"""
from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from latentmas.contracts import ARCHS, METHODS, TASK_NAMES

METHOD_LABEL = {"baseline": "Single", "text_mas": "TextMAS", "latent_mas": "LatentMAS"}
METHOD_SHORT = {"baseline": "Single", "text_mas": "Text", "latent_mas": "Latent"}
# the key of a setting, the seed-pooled unit of the tables (a "cell" of the pipeline is one seed of it)
SETTING_KEY = ("model", "task", "method", "arch", "latent_steps", "realign", "memory")


def order_rank(value: Any, order: Sequence[str]) -> tuple:
    if value is None:
        return (0, 0, "")
    if value in order:
        return (1, order.index(value), "")
    return (2, 0, str(value))


def setting_sort_key(key: tuple) -> tuple:
    model, task, method, arch, latent_steps, realign, memory = key
    return (
        model,
        order_rank(task, TASK_NAMES),
        METHODS.index(method),
        order_rank(arch, ARCHS),
        -1 if latent_steps is None else latent_steps,
        0 if realign is None else (1 if realign else 2),  # realign on before off
        (0, "") if memory is None else ((1, "") if memory == "all" else (2, memory)),
    )


def _rank_exprs(col: str, order: Sequence[str]) -> list[pl.Expr]:
    """Polars twin of :func:`order_rank`: (null 0 / known 1 / unknown 2, index in order, name if unknown)."""
    c = pl.col(col)
    known = c.is_in(list(order))
    group = pl.when(c.is_null()).then(0).when(known).then(1).otherwise(2)
    index = c.replace_strict(list(order), list(range(len(order))), default=0, return_dtype=pl.Int64)
    name = pl.when(known | c.is_null()).then(pl.lit("")).otherwise(c)
    return [group, index, name]


def sort_exprs() -> list[pl.Expr]:
    """Sort keys that order a frame with the :data:`SETTING_KEY` columns like :func:`setting_sort_key`."""
    memory = pl.col("memory")
    return [
        pl.col("model"),
        *_rank_exprs("task", TASK_NAMES),
        pl.col("method").replace_strict(list(METHODS), list(range(len(METHODS))), return_dtype=pl.Int64),
        *_rank_exprs("arch", ARCHS),
        pl.col("latent_steps").fill_null(-1),
        pl.when(pl.col("realign").is_null()).then(0).when(pl.col("realign")).then(1).otherwise(2),
        pl.when(memory.is_null()).then(0).when(memory == "all").then(1).otherwise(2),
        pl.when(memory.is_null() | (memory == "all")).then(pl.lit("")).otherwise(memory),
    ]


def sorted_tasks(tasks) -> list[str]:
    return sorted(set(tasks), key=lambda t: order_rank(t, TASK_NAMES))


def sorted_archs(archs) -> list[str]:
    return sorted({a for a in archs if a is not None}, key=lambda a: order_rank(a, ARCHS))


def _variant(row: dict[str, Any]) -> str:
    parts = []
    if row["method"] == "latent_mas":
        parts.append(f"m={row['latent_steps']}")
        if row["realign"] is False:
            parts.append("no realign")
    if row["memory"] not in (None, "all"):
        parts.append(f"memory={row['memory']}")
    return ", ".join(parts)


def config_label(row: dict[str, Any]) -> str:
    """A configuration without its model and task: method, arch (MAS only) and non-default variant settings."""
    inner = ([row["arch"]] if row["arch"] is not None else []) + ([_variant(row)] if _variant(row) else [])
    return METHOD_LABEL[row["method"]] + (f" ({', '.join(inner)})" if inner else "")


ARCH_SHORT = {"sequential": "seq", "hierarchical": "hier"}


def short_label(row: dict[str, Any]) -> str:
    """A two-line tick label for crowded axes: ``Latent seq`` / ``m=10 noRA`` (legends keep :func:`config_label`)."""
    head = METHOD_SHORT[row["method"]] + (f" {ARCH_SHORT.get(row['arch'], row['arch'])}" if row["arch"] else "")
    tail = []
    if row["method"] == "latent_mas":
        tail.append(f"m={row['latent_steps']}" + ("" if row["realign"] is not False else " noRA"))
    if row["memory"] not in (None, "all"):
        tail.append(f"mem={row['memory']}")
    return head + ("\n" + " ".join(tail) if tail else "")


def column_label(row: dict[str, Any]) -> str:
    """Readable column header: model, then :func:`config_label`."""
    return f"{row['model']} {config_label(row)}"
