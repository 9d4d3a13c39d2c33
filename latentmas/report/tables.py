"""The numbers of the tables: samples -> per-seed rows -> settings (seeds pooled), with polars.

A *setting* is one configuration ``(model, task, method, arch, latent_steps, realign, memory)``; its seeds are
replicates. Every number is a pure function of the set of samples: rows are sorted before any arithmetic, float sums
use :func:`math.fsum` (exactly rounded, so the order of the inputs cannot change a bit), integer sums are exact.
The confidence intervals are computed per setting from its short list of per-seed accuracies (latentmas.report.stats).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import polars as pl

from latentmas.contracts import TOKEN_KINDS
from latentmas.report.labels import SETTING_KEY, sort_exprs
from latentmas.report.stats import mean_sd, t_interval, wilson_interval

log = logging.getLogger(__name__)

CI_LEVEL = 0.95

_COST_SCHEMA: dict[str, Any] = {
    "n_cost": pl.Int64,
    **{f"tokens_{k}_mean": pl.Float64 for k in TOKEN_KINDS},
    "wall_s_mean": pl.Float64,
}
SETTING_SCHEMA: dict[str, Any] = {
    "model": pl.String, "task": pl.String, "method": pl.String, "arch": pl.String, "latent_steps": pl.Int64,
    "realign": pl.Boolean, "memory": pl.String,
    "n_seeds": pl.Int64, "seeds": pl.List(pl.Int64), "n_samples": pl.Int64, "n_samples_per_seed": pl.List(pl.Int64),
    "n_correct": pl.Int64, "n_failed": pl.Int64, "accuracy": pl.Float64, "accuracy_strict": pl.Float64,
    "acc_per_seed": pl.List(pl.Float64),
    "acc_seed_mean": pl.Float64, "acc_seed_sd": pl.Float64, "ci_method": pl.String,
    "acc_ci95_lo": pl.Float64, "acc_ci95_hi": pl.Float64, "acc_ci95_half": pl.Float64,
    "acc_wilson95_lo": pl.Float64, "acc_wilson95_hi": pl.Float64, "acc_t95_lo": pl.Float64, "acc_t95_hi": pl.Float64,
    **_COST_SCHEMA,
    "speedup_vs_text_mas": pl.Float64, "token_reduction_vs_text_mas": pl.Float64,
    "token_reduction_incl_latent_vs_text_mas": pl.Float64,
}
PER_SEED_SCHEMA: dict[str, Any] = {
    **{k: SETTING_SCHEMA[k] for k in SETTING_KEY},
    "seed": pl.Int64, "n_samples": pl.Int64, "n_correct": pl.Int64, "n_failed": pl.Int64, "accuracy": pl.Float64,
    **_COST_SCHEMA,
}


def _fsum_mean(values: list[float] | None) -> float | None:
    vals = [v for v in (values or []) if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def _counts_and_costs(group_keys: list[str]) -> list[pl.Expr]:
    """Aggregations shared by per-seed rows and settings; costs over successful samples only."""
    ok = pl.col("ok")
    exprs = [
        pl.len().alias("n_samples"),
        pl.col("correct").sum().cast(pl.Int64).alias("n_correct"),
        (~ok).sum().cast(pl.Int64).alias("n_failed"),
        ok.sum().cast(pl.Int64).alias("n_cost"),
    ]
    # integer sums are exact; the mean of ints is int_sum / n (both exact in float64 below 2**53)
    exprs += [pl.col(f"tokens_{k}").filter(ok).sum().alias(f"_sum_{k}") for k in TOKEN_KINDS]
    exprs.append(pl.col("wall_s").filter(ok).implode().alias("_walls"))
    return exprs


def _finish_costs(df: pl.DataFrame) -> pl.DataFrame:
    n = pl.col("n_cost")
    return df.with_columns(
        *[pl.when(n > 0).then(pl.col(f"_sum_{k}") / n).otherwise(None).alias(f"tokens_{k}_mean")
          for k in TOKEN_KINDS],
        pl.col("_walls").map_elements(lambda v: _fsum_mean(list(v)), return_dtype=pl.Float64).alias("wall_s_mean"),
    ).drop([f"_sum_{k}" for k in TOKEN_KINDS] + ["_walls"])


def per_seed_table(samples: pl.DataFrame) -> pl.DataFrame:
    keys = [*SETTING_KEY, "seed"]
    df = samples.group_by(keys).agg(_counts_and_costs(keys))
    df = df.with_columns((pl.col("n_correct") / pl.col("n_samples")).alias("accuracy"))
    df = _finish_costs(df)
    return df.sort([*sort_exprs(), pl.col("seed")]).select(list(PER_SEED_SCHEMA)).cast(PER_SEED_SCHEMA)


def _accuracy_ci(n_correct: int, n: int, per_seed_acc: list[float]) -> dict[str, Any]:
    w_lo, w_hi = wilson_interval(n_correct, n, CI_LEVEL)
    seed_mean, seed_sd = mean_sd(per_seed_acc)
    t_lo = t_hi = None
    if len(per_seed_acc) >= 2:
        t_lo, t_hi = t_interval(per_seed_acc, CI_LEVEL)
    # primary: the t-interval over seeds when it exists and is not degenerate (all seeds equal -> zero width, which
    # says nothing about test-set sampling error); otherwise Wilson on the pooled samples
    if t_lo is not None and len(set(per_seed_acc)) > 1:
        method, lo, hi = "t_seeds", t_lo, t_hi
    else:
        method, lo, hi = "wilson", w_lo, w_hi
    return {"acc_seed_mean": seed_mean, "acc_seed_sd": seed_sd, "ci_method": method, "acc_ci95_lo": lo,
            "acc_ci95_hi": hi, "acc_ci95_half": (hi - lo) / 2.0, "acc_wilson95_lo": w_lo, "acc_wilson95_hi": w_hi,
            "acc_t95_lo": t_lo, "acc_t95_hi": t_hi}


_CI_DTYPE = pl.Struct({k: SETTING_SCHEMA[k] for k in ("acc_seed_mean", "acc_seed_sd", "ci_method", "acc_ci95_lo",
                                                   "acc_ci95_hi", "acc_ci95_half", "acc_wilson95_lo",
                                                   "acc_wilson95_hi", "acc_t95_lo", "acc_t95_hi")})


def _pooled(samples: pl.DataFrame, per_seed: pl.DataFrame) -> pl.DataFrame:
    """One row per setting: counts and costs over all its samples, per-seed lists, confidence intervals."""
    keys = list(SETTING_KEY)
    strict = pl.col("strict_correct")
    # only when every sample was also scored with the original's rules (scoring.extraction: both/strict)
    accuracy_strict = pl.when(strict.null_count() == 0).then(strict.sum() / pl.len()).otherwise(None)
    pooled = _finish_costs(samples.group_by(keys).agg(*_counts_and_costs(keys), accuracy_strict.alias("accuracy_strict")))
    seeds = per_seed.group_by(keys, maintain_order=True).agg(  # per_seed is sorted by seed within a setting
        pl.len().alias("n_seeds"), pl.col("seed").alias("seeds"), pl.col("n_samples").alias("n_samples_per_seed"),
        pl.col("accuracy").alias("acc_per_seed"))
    df = pooled.join(seeds, on=keys, nulls_equal=True)
    df = df.with_columns((pl.col("n_correct") / pl.col("n_samples")).alias("accuracy"))
    ci = pl.struct("n_correct", "n_samples", "acc_per_seed").map_elements(
        lambda r: _accuracy_ci(r["n_correct"], r["n_samples"], list(r["acc_per_seed"])), return_dtype=_CI_DTYPE)
    return df.with_columns(ci.alias("_ci")).unnest("_ci")


def _text_mas_reference(settings: pl.DataFrame) -> pl.DataFrame:
    """For each latent_mas setting, the text_mas setting it is compared with: same model, task and arch; same memory
    if exactly one has it, else the only candidate; ambiguous or absent -> no row."""
    on = ["model", "task", "arch"]
    lm = settings.filter(pl.col("method") == "latent_mas").select(*SETTING_KEY)
    tm = settings.filter(pl.col("method") == "text_mas").select(
        *on, pl.col("memory").alias("ref_memory"), pl.col("wall_s_mean").alias("ref_wall"),
        pl.col("tokens_generated_mean").alias("ref_gen"))
    pairs = lm.join(tm, on=on, nulls_equal=True).with_columns(
        (pl.col("ref_memory").eq_missing(pl.col("memory"))).alias("same_memory"),
        pl.len().over(SETTING_KEY).alias("n_cands"))
    pairs = pairs.with_columns(pl.col("same_memory").sum().over(SETTING_KEY).alias("n_same"))
    chosen = pairs.filter(((pl.col("n_same") == 1) & pl.col("same_memory"))
                          | ((pl.col("n_same") != 1) & (pl.col("n_cands") == 1)))
    for r in pairs.filter((pl.col("n_same") != 1) & (pl.col("n_cands") > 1)).unique(SETTING_KEY).sort(
            sort_exprs()).iter_rows(named=True):
        log.warning("no unique text_mas reference for latent_mas setting %s/%s/%s memory=%s (%d candidates): "
                    "speedup and token reduction left null", r["model"], r["task"], r["arch"], r["memory"],
                    r["n_cands"])
    return chosen.select(*SETTING_KEY, "ref_wall", "ref_gen")


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    return pl.when(num.is_null() | den.is_null() | (den == 0)).then(None).otherwise(num / den)


def setting_table(samples: pl.DataFrame, per_seed: pl.DataFrame) -> pl.DataFrame:
    df = _pooled(samples, per_seed)
    for r in df.filter(pl.col("n_samples_per_seed").list.n_unique() > 1).sort(sort_exprs()).iter_rows(named=True):
        log.warning("setting %s: seeds have different sample counts %s (incomplete shards?)",
                    tuple(r[k] for k in SETTING_KEY), dict(zip(r["seeds"], r["n_samples_per_seed"])))
    ref = _text_mas_reference(df)
    df = df.join(ref, on=list(SETTING_KEY), how="left", nulls_equal=True)
    gen, lat = pl.col("tokens_generated_mean"), pl.col("tokens_latent_mean")
    df = df.with_columns(
        _ratio(pl.col("ref_wall"), pl.col("wall_s_mean")).alias("speedup_vs_text_mas"),
        (1.0 - _ratio(gen, pl.col("ref_gen"))).alias("token_reduction_vs_text_mas"),
        (1.0 - _ratio(gen + lat, pl.col("ref_gen"))).alias("token_reduction_incl_latent_vs_text_mas"),
    )
    return df.sort(sort_exprs()).select(list(SETTING_SCHEMA)).cast(SETTING_SCHEMA)


def compute_tables(samples: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(settings, per-seed rows), both sorted in display order (latentmas.report.labels)."""
    per_seed = per_seed_table(samples)
    return setting_table(samples, per_seed), per_seed
