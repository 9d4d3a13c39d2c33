"""Readable names of the controls (docs/CONTROLS.md) for tables, figures and the significance table."""
from __future__ import annotations

CONTROL_LABEL = {"no_transfer": "no transfer", "single_matched": "single agent, matched latent budget",
                 "map_random_orthogonal": "random orthogonal map", "map_random_spectrum": "random map, W_a spectrum",
                 "scope_handoff": "memory cut at every hand-off"}


def control_label(control: str) -> str:
    """Readable name of a control (docs/CONTROLS.md): ``keep60_knn_top`` -> ``keep 60% (knn_top)``."""
    out = []
    for part in control.split("-"):
        if part.startswith("keep") and "_" in part:
            pct, rule = part[4:].split("_", 1)
            out.append(f"keep {pct}% ({rule})")
        else:
            out.append(CONTROL_LABEL.get(part, part))
    return " + ".join(out)
