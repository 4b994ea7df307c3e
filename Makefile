# `make run` sets everything up and serves; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv run serve worker migrate demo test lint format fuzz chaos bench bench-overload bench-cleanup clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py load_demo_data

run: demo
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo
	@echo "  API:        http://$(HOST):$(PORT)/api/v1/flights   (Authorization: Token <token above>)"
	@echo "              http://$(HOST):$(PORT)/api/v1/bookings  (POST {\"flightId\": 1, \"numberOfSeats\": 2})"
	@echo "              http://$(HOST):$(PORT)/api/v1/payments  (POST {\"bookingId\": 1, \"amount\": \"<totalCost>\"} with header Idempotency-Key)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/api/docs/"
	@echo "  Admin:      http://$(HOST):$(PORT)/admin/   (staff / staff-password)"
	@echo "  Worker:     notifications (webhooks, e-mail printed here) sent by manage.py db_worker"
	@echo
	@# The worker beside the server, stopped with it.
	$(BIN)/python manage.py db_worker --interval 0.5 & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# The notifications worker alone (production runs it under systemd: docs/operations.md#the-worker).
worker: migrate
	$(BIN)/python manage.py db_worker

# Production serving: gunicorn (gunicorn.conf.py; GUNICORN_WORKERS and GUNICORN_THREADS),
# WhiteNoise for static files, DEBUG off. The database is DATABASE_URL's (SQLite if unset).
serve: migrate
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	DEBUG=false GUNICORN_BIND=$(HOST):$(PORT) $(BIN)/gunicorn --config gunicorn.conf.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# schemathesis against the running service (gunicorn, a fresh database; PostgreSQL if DATABASE_URL is set).
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz_api.py $(FUZZ_ARGS)

# Both services under gunicorn on PostgreSQL, Flights over HTTP, processes killed under load;
# then cleanup and the invariants (docs/design.md#invariants) checked in the databases. CHAOS_PG_URL names the server.
chaos: $(STAMP)
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

# Load: the scenarios against gunicorn on a throw-away PostgreSQL database (BENCH_PG_URL
# names the server), with the in-process and the HTTP Flights adapter.
bench: $(STAMP)
	$(BIN)/python bench/load.py $(BENCH_ARGS)

# Past saturation through nginx (what it sheds, how fast, /healthz meanwhile) and 50 clients
# sending a body a byte a second.
bench-overload: $(STAMP)
	$(BIN)/python bench/overload.py $(BENCH_OVERLOAD_ARGS)

# The cleanup command's cost at 10k and 100k stale bookings: time per 1k and peak memory.
bench-cleanup: $(STAMP)
	$(BIN)/python bench/cleanup.py $(BENCH_CLEANUP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .schemathesis staticfiles db.sqlite3 db.sqlite3-* .test-db.sqlite3* .pytest_cache .ruff_cache
