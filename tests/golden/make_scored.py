"""Write the scored records behind the golden aggregate outputs (tests/golden/aggregate/).

A deterministic grid that touches every branch of the tables: two models, numeric / choice / code tasks, all three
methods, both archs, a latent_steps sweep, realign off, a memory variant, 1 or 3 seeds, failed samples (with and
without costs), an all-failed setting, identical seeds (Wilson fallback) and an ambiguous TextMAS reference.
Run ``python tests/golden/make_scored.py`` to regenerate scored.jsonl (outputs: ``latentmas aggregate``).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "aggregate"


def record(rng, model, task, method, seed, i, *, arch=None, m=None, realign=None, memory="all", p_correct=0.5,
           failed=False, costs=True):
    prompt = rng.randint(50, 900)
    latent = 0 if method != "latent_mas" else (m or 0) * rng.randint(2, 3)
    generated = rng.randint(10, 400) // (3 if method == "latent_mas" else 1)
    r = {"schema": 1, "task": task, "sample_id": f"{task}/{i:04d}", "index": i, "method": method, "arch": arch,
         "model": model, "seed": seed, "latent_steps": m, "realign": realign, "memory": memory, "greedy": True,
         "max_new_tokens": 64, "status": "failed" if failed else "ok", "error": "oom" if failed else None,
         "tokens": {"prompt": prompt, "latent": latent, "generated": generated,
                    "total": prompt + latent + generated},
         "wall_s": round(rng.uniform(0.2, 9.0), 3), "dtype": "float32",
         "correct": (not failed) and rng.random() < p_correct}
    if failed and not costs:
        r["tokens"], r["wall_s"] = None, None
    return r


def build() -> list[dict]:
    rng = random.Random(20251)
    out: list[dict] = []
    tasks = {"gsm8k": 6, "arc_easy": 5, "mbppplus": 4, "zz_custom": 3}
    for model, seeds in (("qwen-a", (0, 1, 2)), ("tiny|b", (0,))):
        for task, n in tasks.items():
            if model == "tiny|b" and task == "zz_custom":
                continue
            settings = [dict(method="baseline", arch=None)]
            for arch in ("sequential", "hierarchical"):
                settings.append(dict(method="text_mas", arch=arch))
                for m in (0, 10):
                    for realign in (True, False):
                        settings.append(dict(method="latent_mas", arch=arch, m=m, realign=realign))
            settings.append(dict(method="latent_mas", arch="sequential", m=10, realign=True, memory="previous"))
            if task == "gsm8k":
                settings.append(dict(method="text_mas", arch="sequential", memory="latent_only"))
            for s in settings:
                for seed in seeds:
                    for i in range(n):
                        failed = rng.random() < 0.08
                        out.append(record(rng, model, task, seed=seed, i=i, failed=failed,
                                          costs=rng.random() < 0.5, p_correct=rng.uniform(0.2, 0.9), **s))
    # an all-failed setting and a setting whose seeds agree exactly (t-interval degenerate -> Wilson)
    for seed in (0, 1):
        for i in range(3):
            out.append(record(rng, "qwen-a", "aime2024", "baseline", seed, i, failed=True, costs=False))
            out.append(dict(record(rng, "qwen-a", "aime2024", "text_mas", seed, i, arch="sequential"),
                            correct=i == 0))
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    HERE.mkdir(parents=True, exist_ok=True)
    recs = build()
    (HERE / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    print(f"{len(recs)} records -> {HERE / 'scored.jsonl'}")
