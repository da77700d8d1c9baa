#!/usr/bin/env bash
# make test: the whole suite against real PostgreSQL and Redis, then again on
# SQLite (the embedded default of `make run`) for every test not marked
# `postgresql`. Arguments are passed to both pytest runs.
source "$(dirname "$0")/common.sh"
ensure_venv requirements/test.txt
export DJANGO_SETTINGS_MODULE=config.settings.test
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier"
ensure_redis "redis://127.0.0.1:6379/15"
trap stop_private_services EXIT
say "Checking the architecture contracts (pyproject.toml [tool.importlinter])"
"$VENV/bin/lint-imports" --no-cache --no-logo || die "An architecture contract is broken (see above)."
say "Running the test suite on PostgreSQL"
"$VENV/bin/python" -m pytest "$@"
say "Running the test suite on SQLite (tests marked postgresql or smoke left out)"
rm -f var/test-notifier.sqlite3*
DATABASE_URL="sqlite:///$ROOT/var/test-notifier.sqlite3" \
  "$VENV/bin/python" -m pytest -m "not postgresql and not smoke" "$@"
