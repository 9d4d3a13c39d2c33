"""fetch_dataset: `latentmas fetch-data --task T [--source S] --out results/data/T.parquet` (+ .sha256 sidecar)."""
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (snakemake is injected)
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
out, sha = Path(sm.output.data), Path(sm.output.sha)
args = ["fetch-data", "--task", sm.wildcards.task, "--out", out]
if sm.params.settings["source"] is not None:
    args += ["--source", sm.params.settings["source"]]
latentmas(args, log_path(sm))
# The command writes the sidecar itself (docs/DESIGN.md); write it here if a version did not.
if not sha.exists():
    sha.write_text(hashlib.sha256(out.read_bytes()).hexdigest() + "\n")
