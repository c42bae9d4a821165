# cowork-microvm: common tasks. `make help` lists them.
CARGO ?= cargo
# What `make run` runs in a session: make run CMD='ls -la'
CMD ?= sh -c 'echo "hello from $$PWD as $$(id -un)"; ls'
PREFIX ?= /usr/local

.PHONY: help build release run test lint fmt bench install

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## debug build of every crate
	$(CARGO) build --workspace

release: ## optimized helper binary at target/release/cowork-microvm
	$(CARGO) build --release

run: release ## run CMD in a session on the auto-selected backend
	./target/release/cowork-microvm run -- $(CMD)

test: ## the whole test suite (unit and end-to-end)
	$(CARGO) test --workspace

lint: ## formatting and clippy, as CI checks them
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: release ## spawn latency, output throughput and memory, per backend
	./target/release/cowork-microvm bench --backend host,bwrap,kvm --json target/bench.json

install: release ## install the helper to $(PREFIX)/bin
	install -D -m 0755 target/release/cowork-microvm $(DESTDIR)$(PREFIX)/bin/cowork-microvm
