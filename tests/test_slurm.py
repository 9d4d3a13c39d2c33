"""The pipeline on a real SLURM: tests/slurm/run_harness.sh in both accounting modes.

Each test brings up a one-node SLURM on localhost (munge, slurmctld, slurmd from apt; 2 fake GPUs), runs
config/tests/slurm.yaml through ``snakemake --profile workflow/profiles/slurm`` and asserts outputs, a no-op rerun, a
changed setting resubmitting only its jobs, and a job failing inside SLURM failing the run with its log path shown;
then stops exactly the daemons it started. What is asserted is listed at the top of run_harness.sh; its "[harness]
ok:" lines are printed (``pytest -s``) and end up in the failure message otherwise.

    python3 -m pytest -m slurm tests/test_slurm.py -s      # as root; minutes (both modes), see docs/SLURM.md

It needs root (it starts daemons, installs packages, writes /etc/slurm/*.conf and /dev/fakegpu*); deselect it with
``-m "not slurm"`` (``make test-fast``). It never skips quietly: it skips, loudly, only when it is not root, not on
Debian/Ubuntu, or when the SLURM packages are missing and apt cannot reach its mirrors; every other problem
(including a SLURM already running on this machine) is a failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "slurm" / "run_harness.sh"
STOP = REPO / "tests" / "slurm" / "stop_slurm.sh"
PACKAGES = {"none": ["slurmctld", "slurmd", "slurm-client", "munge"]}
PACKAGES["slurmdbd"] = PACKAGES["none"] + ["slurmdbd", "mariadb-server"]
# What each mode runs (see run_harness.sh): the rerun logic does not depend on the accounting mode, so the
# changed-setting scenario runs once; job-state queries (squeue vs sacct) differ, so success and failure run in both.
SCENARIOS = {"none": "second changed failing", "slurmdbd": "second failing"}
TIMEOUT_S = int(os.environ.get("LATENTMAS_SLURM_TIMEOUT", "600"))


def _loud_skip(why: str) -> None:
    banner = "!" * 100
    msg = f"\n{banner}\nSLURM HARNESS SKIPPED: {why}\n{banner}\n"
    print(msg, file=sys.stderr, flush=True)
    pytest.skip(msg)


def _missing_packages(mode: str) -> list[str]:
    return [p for p in PACKAGES[mode]
            if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]


@pytest.fixture
def slurm_preconditions():
    if sys.platform != "linux" or shutil.which("dpkg") is None or shutil.which("apt-get") is None:
        _loud_skip("not a Debian/Ubuntu machine (no dpkg/apt-get): cannot install SLURM")
    if os.geteuid() != 0:
        _loud_skip("not root: starting slurmd/slurmctld/munged and installing packages needs root")


def _ensure_packages(mode: str) -> None:
    missing = _missing_packages(mode)
    if not missing:
        return
    # start_slurm.sh installs them; find out first whether apt can reach its mirrors at all
    try:
        upd = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=300)
        ok = upd.returncode == 0 and "Err:" not in upd.stdout
        detail = (upd.stdout + upd.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        ok, detail = False, "apt-get update timed out after 300 s"
    if not ok:
        _loud_skip(f"SLURM packages {missing} are not installed and apt cannot reach its mirrors:\n{detail}")


def _run_harness(mode: str, state: Path, work: Path, out: Path) -> tuple[int, str, float]:
    env = dict(os.environ, ACCT=mode, STATE=str(state), WORK=str(work), KEEP="1", PYTHON=sys.executable,
               SCENARIOS=SCENARIOS[mode])
    t0 = time.monotonic()
    with open(out, "w") as fh:
        proc = subprocess.Popen(["bash", str(HARNESS)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the harness's trap then stops the daemons it started
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = -1
    return rc, out.read_text(), time.monotonic() - t0


@pytest.mark.timeout(TIMEOUT_S + 180)
@pytest.mark.parametrize("mode", ["none", "slurmdbd"])
def test_pipeline_on_slurm(mode, slurm_preconditions, tmp_path):
    _ensure_packages(mode)
    # STATE must be reachable by the `slurm` and `mysql` users (pytest's tmp_path is root-only)
    state = Path(f"/tmp/latentmas-slurm-pytest-{mode}-{os.getpid()}")
    work = tmp_path / "work"
    try:
        rc, output, wall = _run_harness(mode, state, work, tmp_path / "harness.log")
    finally:
        # the harness stops its daemons itself (trap on EXIT); this covers a harness killed by the timeout
        subprocess.run(["bash", str(STOP)], env=dict(os.environ, STATE=str(state)), capture_output=True)
    print(output)
    print(f"[test_slurm] ACCT={mode}: harness exit {rc} in {wall:.0f} s", flush=True)
    assert rc == 0, (f"SLURM harness (ACCT={mode}) failed with exit {rc} after {wall:.0f} s "
                     f"(SLURM logs: {state}/log, working directory: {work}):\n" + output[-12000:])
    assert "[harness] ok: every SLURM job reached COMPLETED" in output
    shutil.rmtree(state, ignore_errors=True)
