#!/usr/bin/env bash
# make test: the whole suite against real PostgreSQL and Redis.
source "$(dirname "$0")/common.sh"
ensure_venv requirements/test.txt
export DJANGO_SETTINGS_MODULE=config.settings.test
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier"
ensure_redis "redis://127.0.0.1:6379/15"
trap stop_private_services EXIT
say "Running the test suite"
"$VENV/bin/python" -m pytest "$@"
