"""audit_pages: one page per picked sample of every cell + index.html (latentmas.report.audit.write_site)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import REPO_ROOT  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from latentmas.report.audit import write_site  # noqa: E402

sm = snakemake  # noqa: F821
# results/score/{model}/{task}/{variant}/seed{seed}/all.jsonl -> the cell id
cells = {"/".join(Path(p).parts[-5:-1]): p for p in sm.input}
with open(sm.log[0], "w") as log:
    for page in write_site(cells, sm.output[0]):
        log.write(f"{page}\n")
