"""publish: copy the tables and figures into reports/ (the paper-ready outputs), input i -> output i."""
import shutil
from pathlib import Path

sm = snakemake  # noqa: F821
with open(sm.log[0], "w") as log:
    for src, dst in zip(sm.input, sm.output):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        log.write(f"{src} -> {dst}\n")
