"""merge_cell: concatenate a cell's scored shards (in shard order) into one all.jsonl, checking ids are unique."""
import json
import os
import sys
from pathlib import Path

sm = snakemake  # noqa: F821
out = Path(sm.output[0])
seen = set()
n = 0
tmp = out.with_name(f".{out.name}.tmp")
with open(sm.log[0], "w") as log, open(tmp, "w", encoding="utf-8") as dst:
    for shard in sm.input:
        with open(shard, encoding="utf-8") as src:
            for lineno, line in enumerate(src, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)  # a scored file is written atomically: every line is whole
                sid = rec.get("sample_id")
                if sid in seen:
                    log.write(f"{shard}:{lineno}: duplicate sample_id {sid!r}\n")
                    sys.exit(f"duplicate sample_id {sid!r} in {shard}; see {sm.log[0]}")
                seen.add(sid)
                dst.write(line if line.endswith("\n") else line + "\n")
                n += 1
    log.write(f"{n} records from {len(sm.input)} shard(s)\n")
os.replace(tmp, out)
