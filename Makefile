# The README's commands. `make run` and `make test` each set up what they need first.
.PHONY: setup system-deps run test lint audit bench clean

setup:
	@scripts/bootstrap.sh

system-deps:
	@scripts/system-deps.sh

run: setup
	.venv/bin/egresswatch run

lint: setup
	.venv/bin/ruff check egresswatch tests bench addons
	.venv/bin/mypy

# Known vulnerabilities in the installed dependencies fail; an unreachable advisory
# service is reported as NOT AUDITED and does not (scripts/audit.sh says why).
audit: setup
	@scripts/audit.sh

test: system-deps setup lint
	.venv/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/inspector.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
