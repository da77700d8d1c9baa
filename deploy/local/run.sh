#!/usr/bin/env bash
# make run: web + worker + beat + the local fake ESP, on SQLite by default.
source "$(dirname "$0")/common.sh"
ensure_venv requirements/base.txt
export DJANGO_SETTINGS_MODULE=config.settings.local
export WEB_PORT="${WEB_PORT:-8000}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:$WEB_PORT}"
ensure_redis "redis://127.0.0.1:6379/0"
trap stop_private_services EXIT
say "Migrating the database (${DATABASE_URL:-SQLite var/notifier.sqlite3})"
"$PY" manage.py migrate --noinput
"$PY" manage.py demo_setup
export PATH="$VENV/bin:$PATH"
say "Starting web, worker, beat and the fake ESP (Ctrl-C stops them all)"
"$VENV/bin/honcho" -f deploy/Procfile.dev start
