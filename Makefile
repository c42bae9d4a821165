# cowork-microvm: common tasks. `make help` lists them.
CARGO ?= cargo
# What `make run` runs in a session: make run CMD='ls -la'
CMD ?= sh -c 'echo "hello from $$PWD as $$(id -un)"; ls'
PREFIX ?= /usr/local
# The rootfs profiles `make image` builds: the first is the one the manifest
# names and the kvm backend boots (standard: Debian with what the Claude Code
# CLI needs; root and mmdebstrap); minimal (busybox, no root needed) is built
# beside it because the VMM tests, the benchmark and the nested harness boot
# rootfs-minimal.ext4. `make image PROFILE=minimal` builds minimal alone.
PROFILE ?= standard,minimal
# Where `make image` puts the kernel, rootfs and manifest (empty: the default,
# $COWORK_VM_IMAGE_DIR or ~/.local/share/cowork-microvm/images).
IMAGE_DIR ?=
# The guest agent, statically linked (glibc crt-static; no musl toolchain needed).
AGENT := target/x86_64-unknown-linux-gnu/release/cowork-guest
# The bwrap sandbox's pid 1, beside the helper: static musl when the
# x86_64-unknown-linux-musl target is installed (rustup target add
# x86_64-unknown-linux-musl; .ci/run adds it), else static glibc. It starts
# on every sandboxed spawn, and musl's start is the shorter: about 0.25 ms
# against 0.6 ms for exec to exit here (no CPU-feature probing at start).
INIT := target/release/cowork-microvm-sandbox-init
MUSL := x86_64-unknown-linux-musl

BENCH_FLAGS ?= --quick

.PHONY: help build release agent agent-cli image repro e2e-nested run test lint fmt bench fuzz install deb

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## debug build of every crate
	$(CARGO) build --workspace

release: ## optimized helper binary at target/release/cowork-microvm, and its static sandbox init beside it
	$(CARGO) build --release
	# The init replaced in place by a static one (see INIT above).
	# Tried with the same cargo (and so the same toolchain) that builds the rest.
	if $(CARGO) rustc --release -p cowork-sandbox-init --bin cowork-sandbox-init --target $(MUSL) -- -C strip=symbols; then \
		install -m 0755 target/$(MUSL)/release/cowork-sandbox-init $(INIT); \
	else \
		echo "release: the $(MUSL) build failed (no target? rustup target add $(MUSL)): the sandbox init is static glibc, which starts slower"; \
		$(CARGO) rustc --release -p cowork-microvm --bin cowork-microvm-sandbox-init -- -C target-feature=+crt-static; \
	fi

agent: ## the static guest agent ($(AGENT))
	$(CARGO) rustc --release -p cowork-guest --bin cowork-guest --target x86_64-unknown-linux-gnu -- -C target-feature=+crt-static

agent-cli: ## fetch the pinned Claude Code CLI (npm, integrity-checked) into ~/.cache/cowork-microvm/claude-code
	tests/agent/fetch-claude.sh

image: release agent ## guest kernel + PROFILE rootfs images + manifest (kernel cached by input hash; standard needs root)
	./target/release/cowork-microvm image build --profile $(PROFILE) --agent $(AGENT) $(if $(IMAGE_DIR),--out $(IMAGE_DIR))

repro: release agent ## build kernel and rootfs twice from scratch and compare hashes
	rootfs/repro.sh ./target/release/cowork-microvm $(AGENT)

e2e-nested: release ## boot the guest with our VMM inside a QEMU-TCG machine with nested KVM
	tests/nested/e2e-nested.sh ./target/release/cowork-microvm $(or $(IMAGE_DIR),$(COWORK_VM_IMAGE_DIR),$(HOME)/.local/share/cowork-microvm/images) target/nested.json

run: release ## run CMD in a session on the auto-selected backend
	./target/release/cowork-microvm run -- $(CMD)

test: ## the whole test suite (unit and end-to-end)
	$(CARGO) test --workspace

lint: ## formatting and clippy, as CI checks them
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: release ## quick benchmark (host, bwrap, kvm where usable, and the QEMU+virtiofsd reference): table, target/bench/bench.{json,svg,png}; BENCH_FLAGS= for the full profile
	mkdir -p target/bench
	./target/release/cowork-microvm bench --backend host,bwrap,kvm,qemu $(BENCH_FLAGS) --json target/bench/bench.json --svg target/bench/bench.svg

fuzz: ## every cargo-fuzz target for FUZZ_SECONDS (default 60) each; crashes go to fuzz/regressions/
	fuzz/run.sh $(or $(FUZZ_SECONDS),60)

install: release agent ## install the helper and the guest agent to $(PREFIX)/bin
	install -D -m 0755 target/release/cowork-microvm $(DESTDIR)$(PREFIX)/bin/cowork-microvm
	install -D -m 0755 $(INIT) $(DESTDIR)$(PREFIX)/bin/cowork-microvm-sandbox-init
	install -D -m 0755 $(AGENT) $(DESTDIR)$(PREFIX)/bin/cowork-guest

deb: release agent ## target/deb/cowork-microvm_<version>_amd64.deb: helper, static sandbox init, static agent, prebuilt guest kernel (from the kernel cache), docs
	packaging/build-deb.sh target/release/cowork-microvm $(AGENT) target/deb $(INIT)
