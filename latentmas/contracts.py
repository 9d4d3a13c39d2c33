"""The contracts every layer shares: names, file layout and record schemas, each defined once.

The runner, the scorer, the aggregator, the figures and ``workflow/rules/common.smk`` import these instead of
spelling a task name, a method or a file name themselves; the JSON Schemas beside this module (package data) say
what a record is.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = PACKAGE_DIR / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
