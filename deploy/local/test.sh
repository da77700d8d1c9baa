#!/usr/bin/env bash
# make test: the whole suite against real PostgreSQL and Redis and, at the
# same time, again on SQLite (the embedded default of `make run`) for every
# test not marked `postgresql` or `smoke`. The two passes use their own
# databases and Redis databases; the SQLite pass writes var/test-sqlite.log,
# whose summary is printed at the end. Arguments are passed to both runs.
source "$(dirname "$0")/common.sh"
ensure_venv requirements/test.txt
export DJANGO_SETTINGS_MODULE=config.settings.test
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier"
ensure_redis "redis://127.0.0.1:6379/15"
trap stop_private_services EXIT
say "Checking the architecture contracts (pyproject.toml [tool.importlinter])"
"$VENV/bin/lint-imports" --no-cache --no-logo || die "An architecture contract is broken (see above)."

# The SQLite pass's Redis database: the one below the PostgreSQL pass's.
redis_db="${REDIS_URL##*/}"; [[ "$redis_db" =~ ^[0-9]+$ ]] || redis_db=15
sqlite_redis="${REDIS_URL%/*}/$(( (redis_db + 15) % 16 ))"
rm -f var/test-notifier.sqlite3* var/test-sqlite.log
say "Running the test suite on SQLite in the background (tests marked postgresql or smoke left out; output: var/test-sqlite.log)"
DATABASE_URL="sqlite:///$ROOT/var/test-notifier.sqlite3" REDIS_URL="$sqlite_redis" \
  "$VENV/bin/python" -m pytest -m "not postgresql and not smoke" "$@" >var/test-sqlite.log 2>&1 &
sqlite_pid=$!
say "Running the test suite on PostgreSQL"
pg_status=0
"$VENV/bin/python" -m pytest "$@" || pg_status=$?
sqlite_status=0
wait "$sqlite_pid" || sqlite_status=$?
say "The SQLite pass (var/test-sqlite.log):"
if [[ "$sqlite_status" != 0 ]]; then
  sed -n '/= FAILURES =/,$p' var/test-sqlite.log | tail -n 200
else
  tail -n 3 var/test-sqlite.log
fi
[[ "$pg_status" == 0 && "$sqlite_status" == 0 ]] || die "Tests failed (PostgreSQL pass: exit $pg_status, SQLite pass: exit $sqlite_status)."
