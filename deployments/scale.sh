#!/usr/bin/env bash
# The Upsell stack on Prefect's own distributed setup, on this machine: a Prefect server backed by PostgreSQL
# and Redis messaging, the prefect.yaml deployments on the `upsell-pool` process work pool, two workers, and
# `upsell demo --external-workers` against it. Everything it starts is recorded by PID and stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="$REPO/.venv/bin"
PREFECT_REDIS_VERSION="0.3.0" # needs prefect>=3.7.4 and redis>=8; tested with prefect 3.9.1
PG_BIN="${UPSELL_SCALE_PG_BIN:-/usr/lib/postgresql/15/bin}"
STATE_DIR="${UPSELL_SCALE_DIR:-$REPO/.upsell/scale}"
PREFECT_PORT="${UPSELL_SCALE_PREFECT_PORT:-4300}"
PG_PORT="${UPSELL_SCALE_PG_PORT:-}"       # empty: a free port
REDIS_PORT="${UPSELL_SCALE_REDIS_PORT:-}" # empty: a free port
WORKERS=2
WORKER_POLL_S="${UPSELL_SCALE_WORKER_POLL_S:-2}" # Prefect's default is 10 s; the demo waits on every pick-up
DEMO_TIMEOUT=300
KEEP=0
RUN_DEMO=1
STOP_ONLY=0
POOL="upsell-pool"

usage() {
    cat <<EOF
Usage: deployments/scale.sh [options]

Runs the Upsell stack on Prefect's distributed setup on this machine and runs the demo on it:
  1. installs what is missing: redis-server and postgresql (apt-get), prefect-redis==$PREFECT_REDIS_VERSION (venv)
  2. a PostgreSQL cluster under the state dir (created once, reused) and redis-server, both on 127.0.0.1
  3. \`prefect server start\` on PostgreSQL with Redis messaging, cache, ordering, lease storage and Docket
  4. the $POOL process work pool, \`prefect deploy --all\`, and $WORKERS workers (upsell-worker-1..N)
  5. \`upsell demo --external-workers\` against it; the exit code is the demo's
  6. stops every process it started (by PID) on exit, unless --keep

Options:
  --state-dir DIR     where the cluster, logs and PIDs live (default: \$UPSELL_SCALE_DIR or .upsell/scale)
  --port N            Prefect server port (default: \$UPSELL_SCALE_PREFECT_PORT or 4300)
  --workers N         number of workers on $POOL (default: 2)
  --demo-timeout S    seconds the demo waits for its runs (default: 300)
  --no-demo           start the stack but do not run the demo (use with --keep)
  --keep              leave the stack running on exit and print how to stop it
  --stop              stop a stack left running by --keep (the PIDs recorded in the state dir), then exit
  -h, --help          this help

Environment:
  UPSELL_SCALE_PG_PORT, UPSELL_SCALE_REDIS_PORT   fixed ports instead of free ones
  UPSELL_SCALE_PG_BIN                             PostgreSQL binaries (default: /usr/lib/postgresql/15/bin)
  UPSELL_SCALE_WORKER_POLL_S                      PREFECT_WORKER_QUERY_SECONDS of the workers (default: 2)
EOF
}

die() {
    echo "scale.sh: error: $*" >&2
    exit 2
}
say() { echo "==> $*"; }

while (($#)); do
    case "$1" in
    --state-dir) STATE_DIR="${2:?--state-dir needs a value}"; shift 2 ;;
    --port) PREFECT_PORT="${2:?--port needs a value}"; shift 2 ;;
    --workers) WORKERS="${2:?--workers needs a value}"; shift 2 ;;
    --demo-timeout) DEMO_TIMEOUT="${2:?--demo-timeout needs a value}"; shift 2 ;;
    --no-demo) RUN_DEMO=0; shift ;;
    --keep) KEEP=1; shift ;;
    --stop) STOP_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer"
[[ "$PREFECT_PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"
[[ -x "$VENV_BIN/python" ]] || die "no venv at $REPO/.venv: run \`make test\` or \`python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'\` first"

mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
LOG_DIR="$STATE_DIR/logs"
PIDS_FILE="$STATE_DIR/pids"
PG_DATA="$STATE_DIR/pgdata"
PG_PASSWORD_FILE="$STATE_DIR/pg-password"
mkdir -p "$LOG_DIR"

# One script per state dir at a time: a second run would share the cluster's data directory. The processes it
# starts do not inherit the lock (9>&-), so a stack left running by --keep is caught by its PID file instead.
exec 9>"$STATE_DIR/lock"
flock -n 9 || die "another scale.sh is running on $STATE_DIR"

# --- process bookkeeping -------------------------------------------------------------------------------------
# Each background process gets its own process group (job control), so stopping it by PID also stops what it
# spawned (uvicorn, flow-run subprocesses); the terminal's Ctrl-C reaches only this script, which stops them.
set -m

alive() { kill -0 "$1" 2>/dev/null; }

record_pid() { # name pid
    echo "$1 $2" >>"$PIDS_FILE"
    disown "$2" 2>/dev/null || true # no job-control "Terminated" line when it is stopped
}

as_pg() { # run a PostgreSQL binary as the cluster owner (initdb and postgres refuse to run as root)
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop_recorded() {
    [[ -f "$PIDS_FILE" ]] || return 0
    local name pid
    # Reverse order: workers, then the server, then Redis and PostgreSQL.
    while read -r name pid; do
        alive "$pid" || continue
        echo "    stopping $name (pid $pid)"
        if [[ "$name" == postgres ]]; then
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        else
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
        for _ in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            echo "    $name (pid $pid) did not stop in 20s: killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    done < <(tac "$PIDS_FILE")
    rm -f "$PIDS_FILE"
}

if ((STOP_ONLY)); then
    say "Stopping the stack recorded in $PIDS_FILE"
    stop_recorded
    exit 0
fi

if [[ -f "$PIDS_FILE" ]]; then
    while read -r name pid; do
        if alive "$pid"; then
            die "a stack started with --keep is still running ($name pid $pid); stop it with: $0 --stop --state-dir $STATE_DIR"
        fi
    done <"$PIDS_FILE"
    rm -f "$PIDS_FILE" # left by a run that was killed hard; its processes are gone
fi

exec 7>&1 8>&2 # the script's own stdout/stderr: a signal may arrive inside a redirected command
cleanup() {
    local code=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8
    if ((KEEP)); then
        echo
        say "Left running (--keep). Prefect UI: http://127.0.0.1:$PREFECT_PORT  API: $API_URL"
        echo "    use it:   source $STATE_DIR/env.sh   (PREFECT_API_URL and the server's settings)"
        echo "    stop it:  $0 --stop --state-dir $STATE_DIR"
        echo "    PIDs:     $(awk '{printf "%s=%s ", $1, $2}' "$PIDS_FILE" 2>/dev/null)"
    else
        say "Stopping everything this script started"
        stop_recorded
    fi
    exit "$code"
}
API_URL=""
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$VENV_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() {
    "$VENV_BIN/python" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0)' "$1"
}
wait_for() { # description seconds pid command...
    local what="$1" seconds="$2" pid="$3"
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            return 1
        fi
        ((SECONDS < deadline)) || die "$what did not come up within ${seconds}s"
        sleep 0.5
    done
}

# --- 1. install what is missing --------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    ((EUID == 0)) || die "$* is missing and installing it needs root: sudo apt-get install $*"
    if ((!APT_UPDATED)); then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v redis-server >/dev/null; then
    apt_install redis-server
fi
if [[ ! -x "$PG_BIN/initdb" || ! -x "$PG_BIN/pg_ctl" ]]; then
    apt_install postgresql
    if [[ ! -x "$PG_BIN/initdb" ]]; then # Debian's default major version may differ from 15
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    fi
fi
[[ -x "$PG_BIN/initdb" ]] || die "no initdb under $PG_BIN"
if ! "$VENV_BIN/python" -c 'import prefect_redis' 2>/dev/null; then
    say "pip install prefect-redis==$PREFECT_REDIS_VERSION"
    "$VENV_BIN/pip" install -q "prefect-redis==$PREFECT_REDIS_VERSION"
fi
if ! "$VENV_BIN/python" -c 'import asyncpg' 2>/dev/null; then
    say "pip install asyncpg"
    "$VENV_BIN/pip" install -q asyncpg
fi
if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
    say "creating the postgres system user (the cluster cannot run as root)"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --- 2. PostgreSQL and Redis ------------------------------------------------------------------------------------
PG_USER=prefect
PG_PORT="${PG_PORT:-$(free_port)}"
port_free "$PG_PORT" || die "PostgreSQL port $PG_PORT is in use"
if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    say "initdb $PG_DATA (superuser $PG_USER, password in $PG_PASSWORD_FILE)"
    rm -rf "$PG_DATA" # a half-made cluster from an interrupted first run
    mkdir -p "$PG_DATA"
    (umask 077 && "$VENV_BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$PG_PASSWORD_FILE")
    if ((EUID == 0)); then
        chown postgres: "$PG_DATA" "$PG_PASSWORD_FILE"
        as_pg test -w "$PG_DATA" || die "the postgres user cannot write $PG_DATA: use --state-dir on a path it can reach"
    fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$PG_PASSWORD_FILE" \
        --auth-host=scram-sha-256 --auth-local=peer -E UTF8 >"$LOG_DIR/initdb.log" 2>&1 ||
        die "initdb failed: see $LOG_DIR/initdb.log"
fi
PG_PASSWORD="$(cat "$PG_PASSWORD_FILE")"
say "PostgreSQL on 127.0.0.1:$PG_PORT"
touch "$LOG_DIR/postgres.log"
((EUID != 0)) || chown postgres: "$LOG_DIR/postgres.log" # the server writes it as the cluster owner
# TCP on 127.0.0.1 only, no Unix socket (its default directory may not exist or be writable here).
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" start >/dev/null 7>&- 8>&- 9>&- ||
    die "PostgreSQL did not start: see $LOG_DIR/postgres.log"
record_pid postgres "$(head -n1 "$PG_DATA/postmaster.pid")"
export PGPASSWORD="$PG_PASSWORD"
PSQL=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -qtA)
if [[ "$("${PSQL[@]}" -c "select 1 from pg_database where datname = 'prefect'")" != 1 ]]; then
    say "creating database prefect"
    "${PSQL[@]}" -c "create database prefect"
fi
unset PGPASSWORD

REDIS_PORT="${REDIS_PORT:-$(free_port)}"
port_free "$REDIS_PORT" || die "Redis port $REDIS_PORT is in use"
mkdir -p "$STATE_DIR/redis"
say "Redis on 127.0.0.1:$REDIS_PORT"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$STATE_DIR/redis" \
    --daemonize no >"$LOG_DIR/redis.log" 2>&1 7>&- 8>&- 9>&- &
REDIS_PID=$!
record_pid redis "$REDIS_PID"
wait_for "Redis" 20 "$REDIS_PID" "$VENV_BIN/python" -c \
    'import redis, sys; redis.Redis(host="127.0.0.1", port=int(sys.argv[1])).ping()' "$REDIS_PORT" ||
    die "redis-server exited: see $LOG_DIR/redis.log"

# --- 3. the Prefect server on PostgreSQL + Redis ---------------------------------------------------------------
port_free "$PREFECT_PORT" || die "port $PREFECT_PORT is in use (another Prefect server?); pick one with --port"
API_URL="http://127.0.0.1:$PREFECT_PORT/api"
# The settings of Prefect's "scale self-hosted Prefect" guide; names checked against prefect 3.9.1 and
# prefect-redis (RedisMessagingSettings: PREFECT_REDIS_MESSAGING_*).
SERVER_ENV=(
    "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/prefect"
    "PREFECT_MESSAGING_BROKER=prefect_redis.messaging"
    "PREFECT_MESSAGING_CACHE=prefect_redis.messaging"
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=prefect_redis.ordering"
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage"
    "PREFECT_REDIS_MESSAGING_HOST=127.0.0.1"
    "PREFECT_REDIS_MESSAGING_PORT=$REDIS_PORT"
    "PREFECT_REDIS_MESSAGING_DB=0"
    "PREFECT_SERVER_DOCKET_URL=redis://127.0.0.1:$REDIS_PORT/1"
    "PREFECT_SERVER_ANALYTICS_ENABLED=false"
    "PREFECT_UI_API_URL=$API_URL"
)
# Clients (deploy, workers, demo) share one results path: a resumed run reads what it persisted before it
# suspended, possibly on the other worker. Across machines this must be shared storage (see docs/scale.md).
CLIENT_ENV=(
    "PREFECT_API_URL=$API_URL"
    "PREFECT_SERVER_ANALYTICS_ENABLED=false"
    "PREFECT_LOCAL_STORAGE_PATH=${PREFECT_LOCAL_STORAGE_PATH:-$STATE_DIR/results}"
)
(
    umask 077
    {
        echo "# Written by deployments/scale.sh: the settings of the stack in $STATE_DIR"
        for kv in "${SERVER_ENV[@]}" "${CLIENT_ENV[@]}"; do printf 'export %q\n' "$kv"; done
    } >"$STATE_DIR/env.sh"
)

say "Prefect server on $API_URL (PostgreSQL + Redis)"
env -u PREFECT_API_URL "${SERVER_ENV[@]}" "$VENV_BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" \
    >"$LOG_DIR/prefect-server.log" 2>&1 7>&- 8>&- 9>&- &
SERVER_PID=$!
record_pid prefect-server "$SERVER_PID"
wait_for "the Prefect server" 120 "$SERVER_PID" \
    "$VENV_BIN/python" -c 'import httpx, sys; httpx.get(sys.argv[1] + "/health", timeout=2).raise_for_status()' "$API_URL" ||
    die "the Prefect server exited: see $LOG_DIR/prefect-server.log"
echo "    /api/health: $("$VENV_BIN/python" -c 'import httpx, sys; print(httpx.get(sys.argv[1] + "/health").text)' "$API_URL")"

# --- 4. work pool, deployments, workers -------------------------------------------------------------------------
cd "$REPO" # prefect.yaml is here, and its pull step sets the runs' working directory to {{ $PWD }}
prefect_cli() { env "${CLIENT_ENV[@]}" "$VENV_BIN/prefect" "$@"; }

if out="$(prefect_cli work-pool create "$POOL" --type process 2>&1)"; then
    say "work pool $POOL created"
elif grep -qi "already exists" <<<"$out"; then
    say "work pool $POOL already exists"
else
    echo "$out" >&2
    die "could not create the $POOL work pool"
fi

say "prefect deploy --all"
prefect_cli --no-prompt deploy --all >"$LOG_DIR/deploy.log" 2>&1 || {
    tail -n 40 "$LOG_DIR/deploy.log" >&2
    die "prefect deploy --all failed: see $LOG_DIR/deploy.log"
}
grep -oE "Deployment '[^']+' successfully created" "$LOG_DIR/deploy.log" | sed 's/^/    /' || true

for n in $(seq 1 "$WORKERS"); do
    name="upsell-worker-$n"
    env "${CLIENT_ENV[@]}" "PREFECT_WORKER_QUERY_SECONDS=$WORKER_POLL_S" \
        "$VENV_BIN/prefect" worker start --pool "$POOL" --name "$name" >"$LOG_DIR/$name.log" 2>&1 7>&- 8>&- 9>&- &
    record_pid "$name" "$!"
    say "worker $name (pid $!, log $LOG_DIR/$name.log)"
done
for n in $(seq 1 "$WORKERS"); do
    name="upsell-worker-$n"
    pid="$(awk -v n="$name" '$1 == n {print $2}' "$PIDS_FILE")"
    wait_for "$name" 60 "$pid" grep -q "started!" "$LOG_DIR/$name.log" ||
        die "$name exited: see $LOG_DIR/$name.log"
done

# --- 5. the demo ----------------------------------------------------------------------------------------------------
if ((!RUN_DEMO)); then
    say "Stack up (--no-demo)."
    exit 0
fi
say "upsell demo --external-workers against $API_URL"
started=$SECONDS
set +e
env "${CLIENT_ENV[@]}" "$VENV_BIN/upsell" demo --external-workers --timeout "$DEMO_TIMEOUT" 2>&1 | tee "$LOG_DIR/demo.log"
demo_code=${PIPESTATUS[0]}
set -e
echo "Script-measured demo wall time on PostgreSQL + Redis: $((SECONDS - started))s (exit $demo_code)"

echo
say "Which worker ran which flow run (from the worker logs)"
for n in $(seq 1 "$WORKERS"); do
    name="upsell-worker-$n"
    runs="$(grep -oE "Beginning flow run '[^']+' for flow '[^']+'" "$LOG_DIR/$name.log" |
        sed -E "s/Beginning flow run '([^']+)' for flow '([^']+)'/\2:\1/" | sort | uniq -c |
        awk '{printf "%s%s%s", (NR > 1 ? ", " : ""), $2, ($1 > 1 ? " (x" $1 ")" : "")}')"
    echo "    $name: ${runs:-none}"
done
exit "$demo_code"
