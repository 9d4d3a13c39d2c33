#!/usr/bin/env bash
# Bring this machine (Debian 12, root, systemd not needed) to a running one-node SLURM on localhost,
# for the SLURM harness (tests/slurm/run_harness.sh, tests/test_slurm.py). Never meant for a real cluster.
#
#   ACCT=none      (default) AccountingStorageType=accounting_storage/none: no database, `sacct` does not work,
#                  so Snakemake's SLURM plugin must be told `--slurm-status-command squeue`.
#   ACCT=slurmdbd  + MariaDB + slurmdbd on 127.0.0.1, so `sacct` works and the plugin runs on its defaults.
#   FAKE_GPUS=N    (default 2) advertise N fake gres/gpu on the node (char devices /dev/fakegpuN), so
#                  `--gpus=1` / `--gres=gpu:1` requests are scheduled and CUDA_VISIBLE_DEVICES is set.
#   STATE=DIR      (default /tmp/latentmas-slurm) spool, logs, pid files, the MariaDB data directory.
#   ACCOUNT=NAME   (default latentmas) ACCT=slurmdbd: an account with root (and $SUDO_USER) as a user.
#   DB_PORT=N      (default 3307) TCP port of the private MariaDB (ACCT=slurmdbd), on 127.0.0.1 only.
#
# The configuration goes to /etc/slurm/{slurm,gres,slurmdbd}.conf, the compiled-in default: SLURM_CONF cannot be
# used, because Snakemake's SLURM plugin deletes every SLURM_* variable inside a job before it calls srun. Files
# there that this script did not write (without its marker line) make it refuse to run; stop_slurm.sh removes the
# ones it wrote. Daemons started here leave their PIDs in $STATE/pids/*.pid; stop_slurm.sh kills exactly those.
# A munged that is already running is reused (and then not stopped). Refuses to run if the SLURM ports
# (6817/6818, and 6819/$DB_PORT with ACCT=slurmdbd) are already taken on this machine.
set -euo pipefail
ACCT=${ACCT:-none}
FAKE_GPUS=${FAKE_GPUS:-2}
STATE=${STATE:-/tmp/latentmas-slurm}
DB_PORT=${DB_PORT:-3307}
ACCOUNT=${ACCOUNT:-latentmas}
NODE=localhost
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
t0=$(date +%s)
log() { echo "[start_slurm +$(( $(date +%s) - t0 ))s] $*"; }
die() { echo "[start_slurm] ERROR: $*" >&2; exit 1; }

case "$ACCT" in none|slurmdbd) ;; *) die "ACCT must be none or slurmdbd, not '$ACCT'";; esac
[ "$(id -u)" = 0 ] || die "must run as root (slurmd runs as root; packages come from apt)"

# ---------------------------------------------------------------- packages
export DEBIAN_FRONTEND=noninteractive
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = slurmdbd ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  log "apt-get install $PKGS"
  apt-get update -q >/dev/null
  # policy-rc.d (present in most containers) keeps postinst from starting services; without systemd they
  # cannot start anyway. Either way nothing below depends on a service the package may have started.
  apt-get install -y -q --no-install-recommends $PKGS >/dev/null
fi

# (a bash /dev/tcp probe: `scontrol ping` without a config stalls for a minute on DNS SRV look-ups)
PORTS="6817 6818"; [ "$ACCT" = slurmdbd ] && PORTS="$PORTS 6819 $DB_PORT"
for port in $PORTS; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    die "something already listens on 127.0.0.1:$port (another SLURM, or another harness run?); stop it first"
  fi
done
ETC=/etc/slurm
MARK="written by latentmas tests/slurm/start_slurm.sh"
mkdir -p "$ETC"
for f in slurm.conf gres.conf slurmdbd.conf; do
  if [ -e "$ETC/$f" ] && ! grep -q "$MARK" "$ETC/$f"; then
    die "$ETC/$f exists and was not written by this script: this machine has its own SLURM; not touching it"
  fi
  rm -f "$ETC/$f"   # ours, left by an earlier run that was not torn down
done
mkdir -p "$STATE"/{pids,log,spool/d}
install -d -o slurm -g slurm "$STATE/spool/ctld"
chown slurm:slurm "$STATE/log"

# ---------------------------------------------------------------- munge
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running: reusing it (it will not be stopped)"
else
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  install -d -o munge -g munge -m 0755 "$STATE/pids/munge"   # munged runs as munge and writes its own pidfile
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/pids/munge/munged.pid"
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null || die "munged does not answer"
fi

# ---------------------------------------------------------------- slurm.conf (+ gres.conf)
GRES_LINE=""; NODE_GRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_LINE="GresTypes=gpu"; NODE_GRES="Gres=gpu:$FAKE_GPUS"
  # Slurm 22.05 drops GPUs that have no device file ("Removing file-less GPU"), so each fake GPU gets a char
  # device with the major/minor of /dev/null. A real GPU node has File=/dev/nvidia[0-N] (or AutoDetect=nvml).
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -e /dev/fakegpu$i ] || mknod -m 666 /dev/fakegpu$i c 1 3
  done
  printf '# %s (STATE=%s)\nName=gpu File=/dev/fakegpu[0-%d]\n' "$MARK" "$STATE" $((FAKE_GPUS - 1)) > "$ETC/gres.conf"
fi
if [ "$ACCT" = slurmdbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$ETC/slurm.conf" <<CONF
# $MARK (STATE=$STATE) ACCT=$ACCT FAKE_GPUS=$FAKE_GPUS
ClusterName=latentmas
SlurmctldHost=$NODE
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
# no systemd/cgroup delegation needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs stay visible to squeue for 300 s: the plugin's squeue status mode needs to see them end
MinJobAge=300
SchedulerType=sched/backfill
# without a default, a job with no --mem takes the whole node and jobs run one at a time
DefMemPerCPU=1000
$ACCT_LINES
$GRES_LINE
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# ---------------------------------------------------------------- accounting DB (private MariaDB + slurmdbd)
if [ "$ACCT" = slurmdbd ]; then
  DATADIR="$STATE/mysql"
  install -d -o mysql -g mysql "$DATADIR" "$STATE/pids/mysql" "$STATE/run-mysqld"
  if [ ! -d "$DATADIR/mysql" ]; then
    log "initialising MariaDB in $DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
  fi
  log "starting mariadbd (127.0.0.1:$DB_PORT)"
  runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$DATADIR" \
      --socket="$STATE/run-mysqld/mysqld.sock" --pid-file="$STATE/pids/mysql/mariadbd.pid" \
      --bind-address=127.0.0.1 --port="$DB_PORT" >"$STATE/log/mariadb.log" 2>&1 &
  SQL="mariadb --no-defaults --socket=$STATE/run-mysqld/mysqld.sock -uroot"
  for _ in $(seq 150); do $SQL -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  $SQL -e 'select 1' >/dev/null || { tail -n 20 "$STATE/log/mariadb.log"; die "mariadbd did not come up"; }
  $SQL -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > "$ETC/slurmdbd.conf" <<CONF
# $MARK (STATE=$STATE)
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CONF
  chown slurm:slurm "$ETC/slurmdbd.conf"; chmod 600 "$ETC/slurmdbd.conf"
  log "starting slurmdbd"
  /usr/sbin/slurmdbd          # daemonises, writes PidFile
  for _ in $(seq 150); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n show cluster >/dev/null || { tail -n 20 "$STATE/log/slurmdbd.log"; die "slurmdbd did not come up"; }
  sacctmgr -i add cluster latentmas >/dev/null 2>&1 || true
  # an account for the submitting user, so Snakemake's plugin can validate `slurm_account` as on a real cluster
  sacctmgr -i add account "$ACCOUNT" cluster=latentmas Description=tests Organization=latentmas >/dev/null 2>&1 || true
  sacctmgr -i add user "${SUDO_USER:-root}" account="$ACCOUNT" cluster=latentmas >/dev/null 2>&1 || true
  [ "${SUDO_USER:-root}" = root ] || sacctmgr -i add user root account="$ACCOUNT" cluster=latentmas >/dev/null 2>&1 || true
  sacctmgr -n -P list assoc format=cluster,account,user | sed 's/^/[start_slurm] assoc: /'
fi

# ---------------------------------------------------------------- slurmctld / slurmd
log "starting slurmctld"
/usr/sbin/slurmctld -i          # daemonises; -i ignores stale state
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || { tail -n 20 "$STATE/log/slurmctld.log"; die "slurmctld did not come up"; }
log "starting slurmd"
/usr/sbin/slurmd -N "$NODE"     # the node is called localhost whatever `hostname` says
for _ in $(seq 150); do
  st=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  [ "$st" = idle ] && break; sleep 0.2
done
sinfo -o '%P %a %D %t %N %c %m %G'
[ "$(sinfo -h -n $NODE -o %t)" = idle ] || { tail -n 20 "$STATE"/log/*.log; die "node not idle"; }
log "SLURM up (ACCT=$ACCT FAKE_GPUS=$FAKE_GPUS); started pids: $(cat "$STATE"/pids/*.pid "$STATE"/pids/*/*.pid 2>/dev/null | tr '\n' ' ')"
