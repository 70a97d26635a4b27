# foreman's everyday commands. `just` itself ships in the dev extras (rust-just):
# after the first scripts/test or scripts/foreman run, use .venv/bin/just.

# list the recipes
default:
    @{{just_executable()}} --list

# run foreman against FOREMAN_OLLAMA_URL (flags pass through: just serve --help)
serve *ARGS:
    scripts/foreman serve {{ARGS}}

# run foreman in front of the built-in stand-in target
demo *ARGS:
    scripts/foreman demo {{ARGS}}

# run the stand-in Ollama target on its own
standin *ARGS:
    scripts/foreman standin {{ARGS}}

# the whole test suite, acceptance script included
test *ARGS:
    scripts/test {{ARGS}}

# only the end-to-end acceptance script (real processes, official ollama client)
acceptance:
    scripts/bootstrap dev && .venv/bin/python scripts/acceptance.py

# foreman side by side with direct access, nginx and a minimal trio relay (docs/performance.md)
bench *ARGS:
    scripts/bootstrap dev && .venv/bin/python scripts/bench.py {{ARGS}}

# the job queue: enqueue rate, GET /jobs/{id} latency and memory with 10,000 jobs stored
bench-jobs *ARGS:
    scripts/bootstrap dev && .venv/bin/python scripts/bench_jobs.py {{ARGS}}

# what translating a Claude stream into Ollama's NDJSON costs per line
bench-backends *ARGS:
    scripts/bootstrap dev && .venv/bin/python scripts/bench_backends.py {{ARGS}}

# several replicas on one PostgreSQL: chat hand-over between replicas, jobs/s vs SQLite
bench-replicas *ARGS:
    scripts/bootstrap dev && .venv/bin/python scripts/bench_replicas.py {{ARGS}}

# lint and format check
lint:
    scripts/bootstrap dev && .venv/bin/ruff check . && .venv/bin/ruff format --check .
