"""figures: `latentmas figures --table results/tables/settings.parquet --out-dir results/figures`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
out_dir = Path(sm.output[0]).parent
latentmas(["figures", "--table", sm.input.table, "--out-dir", out_dir], log_path(sm), env={"MPLBACKEND": "Agg"})
