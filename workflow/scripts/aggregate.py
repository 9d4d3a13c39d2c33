"""aggregate: `latentmas aggregate results/score/<cell>/all.jsonl... --out-dir results/tables`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
out_dir = Path(sm.output[0]).parent
latentmas(["aggregate", *sm.input, "--out-dir", out_dir], log_path(sm))
