"""score: `latentmas score SHARD.jsonl --data PARQUET --task T --jobs THREADS --extraction E --out SCORED.jsonl`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821
from _common import OFFLINE, latentmas, log_path  # noqa: E402

sm = snakemake  # noqa: F821
latentmas(["score", sm.input.records, "--data", sm.input.data, "--task", sm.wildcards.task,
           "--jobs", sm.threads, "--extraction", sm.params.extraction, "--out", sm.output[0]],
          log_path(sm), env=OFFLINE, threads=sm.threads)
