.PHONY: run test bench chaos fuzz lint format lock

# Bring up web + worker + beat (+ fake ESP) with demo data.
run:
	@bash deploy/local/run.sh

# The whole test suite against real PostgreSQL and Redis.
test:
	@bash deploy/local/test.sh $(ARGS)

# Throughput, scale and latency against the floor and django-post-office.
# Quick: make bench ARGS="--n 2000 --parts throughput"
bench:
	@bash deploy/local/bench.sh $(ARGS)

# Kill, restart and fail the real stack; count every message.
# Quick: make chaos ARGS="--quick"
chaos:
	@bash deploy/local/chaos.sh $(ARGS)

# Fuzz the HTTP API from its OpenAPI schema (schemathesis, ~10,000 cases);
# fails on any 5xx. Quick: make fuzz ARGS="--max-examples 100"
fuzz:
	@bash deploy/local/fuzz.sh $(ARGS)

# Style, and the architecture contracts (pyproject.toml [tool.importlinter]).
lint:
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports --no-cache --no-logo

format:
	@.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# Re-pin requirements/*.txt from requirements/*.in.
lock:
	@.venv/bin/pip install --quiet pip-tools
	@for f in base test bench fuzz; do .venv/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --no-header -o requirements/$$f.txt requirements/$$f.in; done
