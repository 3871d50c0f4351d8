# Myelin's two commands: `make demo` and `make test`. Both install what they
# need first (scripts/setup.sh, idempotent).

.PHONY: setup build demo test lint down

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --bin myelin

# The lab with the Star Wars demo, walked through step by step. `make demo NODES=3`:
# the same app over three nodes (the deathstar's pods on two, the ships on the third),
# saying which steps hold across nodes today.
NODES ?= 1
demo: build
	@NODES=$(NODES) bash scripts/demo.sh

# Every test: formatting, lints, unit tests, kernel and lab tests (root).
test: setup
	@bash scripts/test.sh

lint:
	cargo fmt --all --check
	MYELIN_EBPF_STUB=1 cargo clippy --all-targets -- -D warnings

# Removes the demo's lab.
down:
	./target/release/myelin lab down

# Benchmarks (bench/README.md): every scenario interleaved in rounds, results in
# bench/results/. One scenario: `make bench SCENARIO=node-nginx`; a quick check that
# every scenario produces numbers: `make bench BENCH_ARGS=--smoke`.
.PHONY: bench
bench: setup
	@bash bench/run.sh $(if $(SCENARIO),--scenario $(SCENARIO)) $(BENCH_ARGS)

fuzz:
	@bash scripts/fuzz.sh
