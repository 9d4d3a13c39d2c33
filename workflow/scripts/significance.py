"""significance: `latentmas significance results/score/<cell>/all.jsonl... --out-dir results/tables`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
latentmas(["significance", *sm.input, "--out-dir", Path(sm.output.md).parent], log_path(sm))
