#!/usr/bin/env bash
# make fuzz: schemathesis against the HTTP API of a real server (gunicorn,
# PostgreSQL, Redis), reading the schema the server serves at
# /api/v1/openapi.json, with a real token. Fails on any 5xx answer, on any
# answer the schema does not describe, and on any traceback in the server log.
# Options after ARGS= go to `schemathesis run` (e.g. ARGS="--seed 1").
source "$(dirname "$0")/common.sh"
ensure_venv requirements/fuzz.txt
export DJANGO_SETTINGS_MODULE=config.settings.local
export DEBUG=false  # answer as production does (error pages, no debug 404s)
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier_fuzz"
ensure_redis "redis://127.0.0.1:6379/9"
trap 'stop_server; stop_private_services' EXIT
PORT="${FUZZ_PORT:-8765}"
CASES="${FUZZ_CASES:-1000}"  # per operation and phase; three operations
OUT="$ROOT/var/fuzz"
mkdir -p "$OUT"
SERVER_PID=""
stop_server() { [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; true; }

"$PY" - "$DATABASE_URL" <<'PYEOF'
import sys, psycopg
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
name = u.path.lstrip("/")
with psycopg.connect(urlunsplit(u._replace(path="/postgres")), autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
PYEOF
say "Migrating ${DATABASE_URL%%\?*}"
"$PY" manage.py migrate --noinput >/dev/null

say "Creating a token, a template and a topic for the run"
SECRET="$("$PY" manage.py shell --no-imports -c '
from api.services import api_token_create
from notifier.models import Template, Topic
Template.objects.get_or_create(name="Password reset", defaults={
    "subject": "Reset your password", "html_body": "<p><a href=\"{{ link }}\">Reset</a></p>"})
Topic.objects.get_or_create(key="comments", defaults={
    "name": "Comments", "default_frequency": "instant"})
_, secret = api_token_create(service="fuzz", description="make fuzz",
                             rate_limit_per_minute=1_000_000)
print(secret)
' | tail -1)"

say "Starting gunicorn on 127.0.0.1:$PORT (log: var/fuzz/server.log)"
"$VENV/bin/gunicorn" config.wsgi -b "127.0.0.1:$PORT" --workers 2 --threads 4 \
  --access-logfile /dev/null --error-logfile "$OUT/server.log" --capture-output \
  >"$OUT/server.log" 2>&1 &
SERVER_PID=$!

say "Fuzzing http://127.0.0.1:$PORT/api/v1/openapi.json"
status=0
"$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/api/v1/openapi.json" \
  --wait-for-schema 30 \
  --header "Authorization: Bearer $SECRET" \
  --max-examples "$CASES" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --suppress-health-check too_slow,filter_too_much \
  --report junit --report-dir "$OUT" \
  "$@" || status=$?
stop_server
SERVER_PID=""
if grep -q "Traceback" "$OUT/server.log"; then
  say "The server logged a traceback (var/fuzz/server.log):"
  grep -n -B2 -A20 "Traceback" "$OUT/server.log" | head -60
  status=1
fi
"$VENV/bin/celery" -A config purge -f >/dev/null 2>&1 || true  # nobody sends the queued messages
exit "$status"
