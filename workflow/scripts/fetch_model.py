"""fetch_model: `latentmas fetch-model SPEC --out resources/models/NAME --name NAME`, then the sentinel file."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
sentinel = Path(sm.output.sentinel)
folder = sentinel.parent
s = sm.params.settings
latentmas(["fetch-model", s["spec"], "--out", folder, "--name", s["name"]], log_path(sm))
source = folder / "latentmas_source.json"
info = json.loads(source.read_text()) if source.exists() else {"spec": s["spec"]}
info["files"] = sorted(p.name for p in folder.iterdir() if p.name != sentinel.name)
sentinel.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
