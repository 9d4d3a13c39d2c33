#!/usr/bin/env bash
# Teardown by PID: stop exactly the daemons tests/slurm/start_slurm.sh started (pid files under $STATE/pids).
# Then removes the /etc/slurm/*.conf files start_slurm.sh wrote for this $STATE (those carrying its marker line).
# Safe to call twice, or after a start that failed half way. Jobs still running under our slurmd die with it.
STATE=${STATE:-/tmp/latentmas-slurm}
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  case $d in
    munged)   f="$STATE/pids/munge/munged.pid" ;;
    mariadbd) f="$STATE/pids/mysql/mariadbd.pid" ;;
    *)        f="$STATE/pids/$d.pid" ;;
  esac
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  # only kill it if that pid still is the daemon we started (pids get reused)
  if kill -0 "$pid" 2>/dev/null && grep -qa "$d" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break   # a zombie is already dead
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
      kill -KILL "$pid"
    fi
    echo "[stop_slurm] stopped $d ($pid)"
  fi
  rm -f "$f"
done
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/slurmdbd.conf; do
  if [ -f "$f" ] && grep -qF "written by latentmas tests/slurm/start_slurm.sh (STATE=$STATE)" "$f"; then rm -f "$f"; fi
done
