#!/usr/bin/env bash
# make run: web + worker + beat + the local fake ESP, on SQLite by default.
#
# Everything it keeps (the SQLite database, beat's pid file) lives in VAR_DIR
# (default var/). WEB_PORT (8000) and ESP_PORT (8025) choose the ports. It
# installs the same requirements as `make test`, so one install serves both.
source "$(dirname "$0")/common.sh"
ensure_venv requirements/test.txt
export DJANGO_SETTINGS_MODULE=config.settings.local
export VAR_DIR="${VAR_DIR:-$ROOT/var}"
mkdir -p "$VAR_DIR"
export WEB_PORT="${WEB_PORT:-8000}" ESP_PORT="${ESP_PORT:-8025}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:$WEB_PORT}"
export POSTMARK_API_URL="${POSTMARK_API_URL:-http://127.0.0.1:$ESP_PORT/}"
export DATABASE_URL="${DATABASE_URL:-sqlite:///$VAR_DIR/notifier.sqlite3}"
ensure_redis "redis://127.0.0.1:6379/0"
trap stop_private_services EXIT
"$PY" manage.py ensure_database || exit 1
say "Migrating the database (${DATABASE_URL%%\?*})"
"$PY" manage.py migrate --noinput
"$PY" manage.py demo_setup
export PATH="$VENV/bin:$PATH"
say "Starting web, worker, beat and the fake ESP (Ctrl-C stops them all)"
"$VENV/bin/honcho" -f deploy/Procfile.dev start
