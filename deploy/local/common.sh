# Shared by run.sh and test.sh: a virtualenv, and Redis/PostgreSQL found or
# started privately. Sourced, not executed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p var
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PRIVATE_PIDS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

# ensure_venv REQUIREMENTS: .venv with those pinned requirements installed.
# One stamp per requirements file (named after it and its content), so `make
# run` and `make test` (the same file) and `make bench` never undo each other.
ensure_venv() {
  local requirements="$1" name stamp
  name="$(basename "$requirements" .txt)"
  stamp="$VENV/.installed-$name-$(cat "$requirements" requirements/base.txt | md5sum | cut -c1-12)"
  if [[ -f "$stamp" && -x "$PY" ]]; then return 0; fi
  local python
  python="$(find_python)" || die "Python 3.11+ with venv is required (Debian/Ubuntu: apt-get install python3 python3-venv)."
  if [[ ! -x "$PY" ]]; then
    say "Creating virtualenv .venv with $python"
    "$python" -m venv "$VENV" || die "Could not create a virtualenv (Debian/Ubuntu: apt-get install python3-venv)."
  fi
  say "Installing pinned requirements from $requirements"
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  rm -f "$VENV/.installed-$name-"*
  touch "$stamp"
}

redis_answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()
PYEOF
}

# ensure_redis DEFAULT_URL: exports REDIS_URL pointing at a Redis that answers.
ensure_redis() {
  export REDIS_URL="${REDIS_URL:-$1}"
  if redis_answers "$REDIS_URL"; then
    say "Using Redis at $REDIS_URL"; return 0
  fi
  local server
  server="$(command -v redis-server || true)"
  [[ -n "$server" ]] || die "Redis is not answering at $REDIS_URL and redis-server is not installed. Install it (Debian/Ubuntu: apt-get install redis-server) or set REDIS_URL."
  local port=6390 dir="$ROOT/var/redis"
  mkdir -p "$dir"
  say "Redis not answering at $REDIS_URL: starting a private redis-server on 127.0.0.1:$port"
  "$server" --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 50); do redis_answers "redis://127.0.0.1:$port/0" && break; sleep 0.1; done
  redis_answers "redis://127.0.0.1:$port/0" || die "The private redis-server did not start; see $dir/redis.log"
  PRIVATE_PIDS+=("$(cat "$dir/redis.pid")")
  local db="${REDIS_URL##*/}"; [[ "$db" =~ ^[0-9]+$ ]] || db=0
  export REDIS_URL="redis://127.0.0.1:$port/$db"
}

pg_answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, psycopg
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
psycopg.connect(urlunsplit(u._replace(path="/postgres")), connect_timeout=2).close()
PYEOF
}

find_pg_bin() {
  local name="$1"
  command -v "$name" 2>/dev/null && return 0
  ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -1
}

# ensure_postgres DEFAULT_URL: exports DATABASE_URL pointing at a server that answers.
ensure_postgres() {
  export DATABASE_URL="${DATABASE_URL:-$1}"
  if pg_answers "$DATABASE_URL"; then
    say "Using PostgreSQL at ${DATABASE_URL%%\?*}"; return 0
  fi
  local initdb pg_ctl
  initdb="$(find_pg_bin initdb)"; pg_ctl="$(find_pg_bin pg_ctl)"
  [[ -n "$initdb" && -n "$pg_ctl" ]] || die "PostgreSQL is not answering at $DATABASE_URL and its server binaries are not installed. Install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL."
  local port=5499 dir="${PRIVATE_PG_DIR:-$ROOT/var/pg}" run_as=()
  if [[ "$(id -u)" == 0 ]]; then
    # PostgreSQL refuses to run as root.
    local user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
    dir="/tmp/notifier-pg-$(echo "$ROOT" | md5sum | cut -c1-8)"
    run_as=(runuser -u "$user" --)
    mkdir -p "$dir"; chown "$user" "$dir"
  fi
  say "PostgreSQL not answering: starting a private server on 127.0.0.1:$port (data in $dir)"
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    "${run_as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 \
      || die "initdb failed; see $dir/initdb.log"
  fi
  "${run_as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || die "The private PostgreSQL did not start; see $dir/server.log"
  PRIVATE_PG=("${run_as[@]}" "$pg_ctl" -D "$dir/data" -m fast stop)
  local name="${DATABASE_URL##*/}"; name="${name%%\?*}"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/${name:-notifier}"
}

stop_private_services() {
  for pid in "${PRIVATE_PIDS[@]:-}"; do [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; done
  if [[ -n "${PRIVATE_PG[*]:-}" ]]; then "${PRIVATE_PG[@]}" >/dev/null 2>&1 || true; fi
}
