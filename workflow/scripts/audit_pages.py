"""audit_pages: index.html + the picked pages of every cell (latentmas.report.audit.write_site); output 0 = index."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import REPO_ROOT  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from latentmas.report.audit import write_site  # noqa: E402

sm = snakemake  # noqa: F821
# results/score/{model}/{task}/{variant}/seed{seed}/all.jsonl -> the cell id
cells = {"/".join(Path(p).parts[-5:-1]): p for p in sm.input}
written = {str(p) for p in write_site(cells, Path(sm.output[0]).parent)}
with open(sm.log[0], "w") as log:
    log.write("\n".join(sorted(written)) + "\n")
missing = sorted(set(map(str, sm.output)) - written)
if missing:
    sys.exit(f"audit_pages: declared pages not written (cell without records?): {missing[:5]}")
