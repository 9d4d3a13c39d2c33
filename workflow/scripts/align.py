"""align: `latentmas align --model DIR [--ridge-lambda L] --device D --out results/align/NAME.safetensors`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import OFFLINE, latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
s = sm.params.settings
args = ["align", "--model", Path(sm.input.model).parent, "--device", s["device"], "--out", sm.output[0]]
if "ridge_lambda" in s:
    args += ["--ridge-lambda", repr(float(s["ridge_lambda"]))]
latentmas(args, log_path(sm), env=OFFLINE, threads=sm.threads)
