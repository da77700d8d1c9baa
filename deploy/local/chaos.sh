#!/usr/bin/env bash
# make chaos: fault-injection scenarios on the real stack (see chaos/run.py).
source "$(dirname "$0")/common.sh"
ensure_venv requirements/test.txt
export DJANGO_SETTINGS_MODULE=config.settings.test
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier"
command -v redis-server >/dev/null || die "make chaos starts its own Redis (with AOF) and needs redis-server (Debian/Ubuntu: apt-get install redis-server)."
trap stop_private_services EXIT
base="${DATABASE_URL%/*}"
export CHAOS_DATABASE_URL="${CHAOS_DATABASE_URL:-$base/notifier_chaos}"
"$PY" -m chaos.run "$@"
