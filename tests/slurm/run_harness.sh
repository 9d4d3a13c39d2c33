#!/usr/bin/env bash
# The SLURM harness: prove the pipeline runs through Snakemake's SLURM executor plugin against a real SLURM.
#
#   sudo tests/slurm/run_harness.sh                 # ACCT=none: no accounting DB, plugin told --slurm-status-command squeue
#   sudo ACCT=slurmdbd tests/slurm/run_harness.sh   # MariaDB + slurmdbd: plugin on its defaults (sacct)
#
# On a fresh Debian 12 machine (root, apt reachable; no systemd needed) it
#   1. brings up a one-node SLURM on localhost with 2 fake GPUs (tests/slurm/start_slurm.sh, packages from apt),
#   2. runs config/tests/slurm.yaml (1 tiny random-weight model, gsm8k, 2 items, baseline + latent_mas) through
#      `snakemake --profile workflow/profiles/slurm` in a scratch working directory, and asserts
#        - the outputs (records, scored records, tables, figures) and that every SLURM job reached COMPLETED,
#        - align/infer were SLURM jobs with a GPU, fetch/merge/aggregate/figures/publish ran locally,
#   3. a second run submits nothing,
#   4. a changed setting (latent steps 2 -> 3, from a second config file) submits only the latent_mas jobs,
#   5. a model that fails inside its SLURM job (a local model folder without weights) makes Snakemake fail,
#      with the job's SLURM log path printed (FAIL_RETRIES=1: after one resubmission),
#   6. stops exactly the daemons it started (trap on EXIT, also on failure or Ctrl-C).
# Submissions are counted from Snakemake's "Job ... has been submitted with SLURM jobid N" lines and, in every run,
# cross-checked against the batch submissions slurmctld logged meanwhile.
# Exit status 0 = every assertion held. Lines "[harness] ok: ..." are the assertions, "[harness] FAIL: ..." the
# first one that did not hold. Evidence (sbatch submissions, sacct / slurmctld log lines) is printed on the way.
#
# Environment: ACCT (none|slurmdbd), SCENARIOS (default "second changed failing": steps 3-5 above; the first run
# always happens), FAIL_RETRIES (default 0; 1 = step 5 also proves a failed job is resubmitted, ~35 s more),
# INIT_S (--slurm-init-seconds-before-status-checks, default 4), STATE (SLURM state dir, default /tmp/latentmas-slurm),
# WORK (working directory, default a fresh mktemp dir; removed on success unless KEEP=1),
# PYTHON (interpreter that has latentmas + snakemake + the slurm plugin, default: python3 on PATH).
set -euo pipefail
ACCT=${ACCT:-none}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export STATE=${STATE:-/tmp/latentmas-slurm}
PYTHON=${PYTHON:-python3}
SCENARIOS=${SCENARIOS:-"second changed failing"}   # "first" always runs; the others can be left out
FAIL_RETRIES=${FAIL_RETRIES:-0}   # 1 also proves a failed job is resubmitted (+~35 s: the plugin backs off)
T0=$(date +%s)
say()  { echo "[harness +$(( $(date +%s) - T0 ))s] $*"; }
ok()   { echo "[harness] ok: $*"; }
fail() { echo "[harness] FAIL: $*" >&2; exit 1; }

cleanup() {
  rc=$?
  trap '' PIPE INT TERM     # a closed stdout (killed tee) must not stop the teardown
  say "teardown"
  "$HERE/stop_slurm.sh" || true
  if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ] && [ -n "${WORK_CREATED:-}" ]; then rm -rf "$WORK"; fi
  [ "$rc" = 0 ] || echo "[harness] working directory kept for inspection: ${WORK:-?}; SLURM logs: $STATE/log" >&2
  say "exit $rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ 1. SLURM up
"$PYTHON" -c "import latentmas, snakemake, snakemake_executor_plugin_slurm" 2>/dev/null \
  || fail "$PYTHON cannot import latentmas + snakemake + snakemake_executor_plugin_slurm: pip install -e '.[workflow]'"
ACCT=$ACCT "$HERE/start_slurm.sh"
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /tmp/latentmas-slurm-work.XXXXXX); WORK_CREATED=1; fi
mkdir -p "$WORK"
say "working directory $WORK"

export SBATCH_PARTITION=debug                 # read by the profile's default-resources
STATUS_ARGS=()
if [ "$ACCT" = slurmdbd ]; then
  export SBATCH_ACCOUNT=latentmas              # the account start_slurm.sh created; the plugin validates it
else
  unset SBATCH_ACCOUNT
  STATUS_ARGS=(--slurm-status-command squeue) # no sacct without accounting: the plugin would hang
fi
SM=("$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --directory "$WORK"
    --profile "$REPO/workflow/profiles/slurm"
    --slurm-init-seconds-before-status-checks "${INIT_S:-4}" --seconds-between-status-checks 2
    "${STATUS_ARGS[@]}")
CFG=(--configfile "$REPO/config/tests/slurm.yaml")

# run NAME ARGS...: run Snakemake, keep its output in $WORK/NAME.log, set RC, SUBMITTED (jobids), SUBMITTED_LOGS
run() {
  local name=$1; shift
  say "run $name: snakemake ${*}"
  local t=$(date +%s) before
  before=$(ctld_submits)
  set +e
  "${SM[@]}" "$@" > "$WORK/$name.log" 2>&1
  RC=$?
  set -e
  SUBMITTED=$(sed -n 's/.*has been submitted with SLURM jobid \([0-9]*\) (log: \(.*\))\.$/\1/p' "$WORK/$name.log" | tr '\n' ' ')
  SUBMITTED_LOGS=$(sed -n 's/.*has been submitted with SLURM jobid \([0-9]*\) (log: \(.*\))\.$/\2/p' "$WORK/$name.log")
  say "run $name: exit $RC in $(( $(date +%s) - t ))s; sbatch submissions: $(n_words "$SUBMITTED") (jobids: ${SUBMITTED:-none})"
  grep -E "has been submitted with SLURM jobid" "$WORK/$name.log" | sed 's/^/    /' || true
  # the same count from SLURM's side: batch-job submissions slurmctld logged during this run
  local n_ctld=$(( $(ctld_submits) - before ))
  [ "$n_ctld" = "$(n_words "$SUBMITTED")" ] \
    || fail "run $name: slurmctld logged $n_ctld batch submissions, Snakemake reported $(n_words "$SUBMITTED")"
  ok "run $name: slurmctld logged the same $n_ctld batch submission(s)"
}
ctld_submits() { grep -c "_slurm_rpc_submit_batch_job: JobId=" "$STATE/log/slurmctld.log" || true; }
show_log() { echo "----- $WORK/$1.log (last ${2:-60} lines)"; tail -n "${2:-60}" "$WORK/$1.log"; echo "-----"; }
n_words() { wc -w <<<"$1" | tr -d ' '; }

# rules of the jobs submitted to SLURM (from their SLURM log paths .../slurm_logs/rule_X/...), and the rules
# Snakemake ran locally ("localrule X:" headers) in a run's log
remote_rules() { sed -n 's/.*has been submitted with SLURM jobid .*\/slurm_logs\/rule_\([a-z_]*\)\/.*/\1/p' "$WORK/$1.log" | sort | uniq -c | awk '{print $2"="$1}' | tr '\n' ' '; }
local_rules()  { sed -n 's/^localrule \([a-z_]*\):$/\1/p' "$WORK/$1.log" | sort -u | tr '\n' ' '; }

# slurm_state JOBID -> final state (sacct with accounting, else scontrol: MinJobAge=300 keeps finished jobs)
slurm_state() {
  if [ "$ACCT" = slurmdbd ]; then
    sacct -X -n -P -j "$1" -o State | head -1 | awk '{print $1}'
  else
    scontrol show job -o "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'
  fi
}
slurm_gpus() {  # 1 if the job was allocated a gres/gpu
  if [ "$ACCT" = slurmdbd ]; then
    sacct -X -n -P -j "$1" -o AllocTRES | grep -q 'gres/gpu=1' && echo 1 || echo 0
  else
    scontrol show job -o "$1" | grep -qE 'TresPerJob=gres:gpu:1|gres/gpu=1' && echo 1 || echo 0
  fi
}
evidence() {  # print what SLURM itself recorded about the given jobs
  local ids=${1// /,}; ids=${ids%,}
  [ -n "$ids" ] || return 0
  if [ "$ACCT" = slurmdbd ]; then
    echo "    sacct -X -j $ids:"
    sacct -X -j "$ids" -o JobID,JobName%36,Account,Partition,State,ExitCode,Elapsed,AllocTRES%45 | sed 's/^/    /'
  else
    echo "    slurmctld log:"
    for id in $1; do grep -E "(submit_batch_job:|Allocate|_job_complete:) JobId=$id( |$)" "$STATE/log/slurmctld.log" | sed 's/^/    /'; done
    echo "    scontrol show job:"
    for id in $1; do scontrol show job -o "$id" | grep -oE '^JobId=[0-9]+|JobState=[A-Z_]+|ExitCode=[0-9:]+|Partition=[a-z]+|TresPerJob=[^ ]+|StdOut=[^ ]+' | tr '\n' ' ' | sed 's/^/    /'; echo; done
  fi
}

# Every run below also checks that slurmctld's log shows as many batch submissions as Snakemake reported.
# ------------------------------------------------------------------------------------------------ 2. first run
run dryrun -n "${CFG[@]}" --quiet rules
[ "$RC" = 0 ] || { show_log dryrun; fail "dry run failed"; }
# jobs the dry run plans for the SLURM rules
EXPECTED=$(awk '$1 == "total" {exit} $1 ~ /^(align|infer|score)$/ {s += $2} END {print s+0}' "$WORK/dryrun.log")
say "dry run plans $EXPECTED SLURM jobs (align + infer + score)"
[ "$EXPECTED" = 5 ] || { show_log dryrun; fail "expected 5 SLURM jobs for config/tests/slurm.yaml, the dry run plans $EXPECTED"; }

run first "${CFG[@]}"
[ "$RC" = 0 ] || { show_log first 150; fail "first run failed (exit $RC)"; }
ok "first run succeeded"
[ "$(n_words "$SUBMITTED")" = "$EXPECTED" ] || fail "first run: $(n_words "$SUBMITTED") sbatch submissions, expected $EXPECTED"
ok "first run submitted exactly the $EXPECTED planned SLURM jobs"
RR=$(remote_rules first); LR=$(local_rules first)
say "SLURM rules: $RR; local rules: $LR"
[ "$RR" = "align=1 infer=2 score=2 " ] || fail "SLURM jobs by rule: '$RR', expected align=1 infer=2 score=2"
for r in fetch_dataset fetch_model merge_cell aggregate figures publish all; do
  grep -qw "$r" <<<"$LR" || fail "rule $r did not run as a local rule (local: $LR)"
done
ok "align/infer/score ran as SLURM jobs; fetch_dataset fetch_model merge_cell aggregate figures publish ran locally"
evidence "$SUBMITTED"
for id in $SUBMITTED; do
  st=$(slurm_state "$id"); [ "$st" = COMPLETED ] || fail "SLURM job $id ended $st, not COMPLETED"
done
ok "every SLURM job reached COMPLETED ($(n_words "$SUBMITTED") jobs)"
while read -r id logp; do
  case "$logp" in
    */rule_align/*|*/rule_infer/*) [ "$(slurm_gpus "$id")" = 1 ] || fail "job $id ($logp) got no gres/gpu" ;;
  esac
done < <(sed -n 's/.*has been submitted with SLURM jobid \([0-9]*\) (log: \(.*\))\.$/\1 \2/p' "$WORK/first.log")
ok "align and infer jobs were allocated one (fake) GPU each"

# outputs: 2 records per infer shard, all ok; scored records; tables and figures
cd "$WORK"
"$PYTHON" - <<'PY' || fail "output checks failed"
import glob, json, sys
shards = sorted(glob.glob("results/infer/tiny-llama/gsm8k/*/seed0/shard-0-of-1.jsonl"))
variants = sorted(p.split("/")[4] for p in shards)
assert variants == ["baseline", "latent_mas-sequential-k2-realign"], variants
for p in shards:
    recs = [json.loads(l) for l in open(p)]
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs), (p, [r.get("error") for r in recs])
    assert not glob.glob(p + ".partial*"), p
scored = glob.glob("results/score/tiny-llama/gsm8k/*/seed0/all.jsonl")
assert len(scored) == 2 and all(len(open(p).readlines()) == 2 for p in scored), scored
for f in ["reports/tables/settings.csv", "reports/tables/summary.json", "reports/figures/accuracy.png",
          "results/align/tiny-llama.safetensors"]:
    assert open(f, "rb").read(1), f
print("[harness] ok: outputs: 2 records per shard (status ok), 2 scored cells, tables, figures, W_a")
PY
cd - >/dev/null

want() { grep -qw "$1" <<<"$SCENARIOS"; }

# ------------------------------------------------------------------------------------------------ 3. nothing to do
if want second; then
run second "${CFG[@]}"
[ "$RC" = 0 ] || { show_log second; fail "second run failed"; }
[ -z "$SUBMITTED" ] || fail "second run submitted SLURM jobs: $SUBMITTED"
grep -q "Nothing to be done" "$WORK/second.log" || { show_log second; fail "second run did not say 'Nothing to be done'"; }
ok "second run submitted nothing (Nothing to be done)"
fi

# ------------------------------------------------------------------------------------------------ 4. changed setting
if want changed; then
printf 'latent: {steps: [3]}\n' > "$WORK/steps3.yaml"
run changed "${CFG[@]}" "$WORK/steps3.yaml"
[ "$RC" = 0 ] || { show_log changed 150; fail "run with latent steps 3 failed"; }
RR=$(remote_rules changed)
say "SLURM rules: $RR"
[ "$(n_words "$SUBMITTED")" = 2 ] && [ "$RR" = "infer=1 score=1 " ] \
  || fail "latent steps 3: expected exactly infer=1 score=1 submitted, got '$RR' (jobids: $SUBMITTED)"
grep -v -q "k3" <<<"$SUBMITTED_LOGS" && fail "a submitted job is not the k3 cell: $SUBMITTED_LOGS"
evidence "$SUBMITTED"
for id in $SUBMITTED; do [ "$(slurm_state "$id")" = COMPLETED ] || fail "SLURM job $id did not complete"; done
"$PYTHON" - "$WORK" <<'PY' || fail "k3 records check failed"
import json, sys
p = sys.argv[1] + "/results/infer/tiny-llama/gsm8k/latent_mas-sequential-k3-realign/seed0/shard-0-of-1.jsonl"
recs = [json.loads(l) for l in open(p)]
assert len(recs) == 2 and all(r["latent_steps"] == 3 and r["status"] == "ok" for r in recs), recs
PY
ok "latent steps 2 -> 3 submitted only the k3 cell's infer + score (baseline and align untouched)"
fi

# ------------------------------------------------------------------------------------------------ 5. failing job
if want failing; then
# A local model folder with a config.json and no weights: fetch_model (local) links it fine, loading it fails
# inside the SLURM job.
mkdir -p "$WORK/broken-model"
printf '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}\n' > "$WORK/broken-model/config.json"
cat > "$WORK/broken.yaml" <<YAML
models:
  broken: {spec: "local:$WORK/broken-model"}
tasks:
  gsm8k: {n: 1, n_shards: 1}
methods: [baseline]
decoding: {greedy: true, max_new_tokens: 4, batch_size: 1}
resources:
  default: {threads: 1, mem_mb: 1000, runtime: 10}
YAML
run failing --configfile "$WORK/broken.yaml" --retries "$FAIL_RETRIES"
[ "$RC" != 0 ] || { show_log failing; fail "a job that fails inside SLURM did not make Snakemake fail"; }
ok "Snakemake failed (exit $RC) on a job that failed inside SLURM"
[ "$(n_words "$SUBMITTED")" = $((FAIL_RETRIES + 1)) ] \
  || fail "failing job: expected $((FAIL_RETRIES + 1)) submissions (1 + --retries $FAIL_RETRIES), got: $SUBMITTED"
[ "$(remote_rules failing)" = "infer=$((FAIL_RETRIES + 1)) " ] || fail "failing run: SLURM rules '$(remote_rules failing)'"
ok "the failing infer job was submitted $((FAIL_RETRIES + 1)) time(s) (--retries $FAIL_RETRIES): jobids $SUBMITTED"
evidence "$SUBMITTED"
for id in $SUBMITTED; do
  st=$(slurm_state "$id"); [ "$st" = FAILED ] || fail "SLURM job $id ended $st, expected FAILED"
done
ok "every attempt ended FAILED in SLURM"
last_log=$(tail -n 1 <<<"$SUBMITTED_LOGS")
grep -E "^    log: " "$WORK/failing.log" | grep -qF "$last_log" \
  || { show_log failing 80; fail "Snakemake's error report does not show the SLURM log path $last_log"; }
[ -s "$last_log" ] || fail "SLURM log $last_log missing or empty"
grep -q "Error in rule infer" "$last_log" || fail "SLURM log $last_log does not report the rule error"
rule_log="$WORK/logs/infer/broken/gsm8k/baseline/seed0/shard-0-of-1.log"
grep -q "latentmas run: error" "$rule_log" || fail "rule log $rule_log does not hold the runner's error"
ok "Snakemake's error names the job's SLURM log ($last_log), which holds the rule error; rule log: $rule_log"
echo "    --- Snakemake's report of the failure:"
grep -A12 -m1 "^Error in rule infer" "$WORK/failing.log" | sed 's/^/    /'
echo "    --- tail of the rule log:"
tail -n 4 "$rule_log" | sed 's/^/    /'
fi

say "all assertions held (ACCT=$ACCT; scenarios: first $SCENARIOS)"
