#!/usr/bin/env bash
# make bench: throughput, scale and latency on the real stack (see bench/run.py).
source "$(dirname "$0")/common.sh"
ensure_venv requirements/bench.txt
export DJANGO_SETTINGS_MODULE=config.settings.bench
ensure_postgres "postgres://postgres@127.0.0.1:5432/notifier_bench"
ensure_redis "redis://127.0.0.1:6379/10"
trap stop_private_services EXIT
if ! command -v smtp-sink >/dev/null && [[ ! -x /usr/sbin/smtp-sink ]]; then
  say "smtp-sink not found: the SMTP transport is skipped (Debian/Ubuntu: apt-get install postfix)"
fi
"$PY" -m bench.run "$@"
