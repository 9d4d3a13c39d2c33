"""latent_health: `latentmas latent-health` over every cell's scored records -> table + lens figure."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
latentmas(["latent-health", *sm.input, "--out-dir", Path(sm.output.csv).parent,
           "--figures-dir", Path(sm.output.png).parent], log_path(sm), env={"MPLBACKEND": "Agg"})
