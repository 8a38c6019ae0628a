# k8s4r — see README.md. `make demo` runs the main job; `make test` runs all tests.
SHELL := /bin/bash
CARGO ?= cargo
X86_MUSL := x86_64-unknown-linux-musl
ARM_MUSL := aarch64-unknown-linux-musl

.PHONY: all build agent cross image tools test test-aarch64 reliability demo bench soak bloat fuzz fmt lint cycles clean

all: build

build:
	$(CARGO) build --release

# The robot agents abort on panic (smaller; the server's release build
# unwinds, see Cargo.toml), so they are linked with rust-lld without unwind
# tables (.cargo/agent-link.ld says why). Every build of a musl agent goes
# through these two targets; test builds for the musl targets unwind and
# keep their tables.
#
# They are also built with their own copy of the standard library
# (`-Zbuild-std`, from the toolchain's rust-src component, which `make
# tools` adds): std is then compiled with the agent's profile (opt-level z,
# one LTO unit with the agent, so what the agent never calls is dropped)
# and without its `backtrace` feature, whose symbolizer (gimli, addr2line,
# miniz_oxide) served only RUST_BACKTRACE, which prints nothing here anyway
# (no unwind tables), and with `optimize_for_size` (std's smaller variants
# of sorting and formatting). A panic still prints its message and
# location and aborts. The flags are unstable cargo flags on the pinned
# stable compiler, enabled by RUSTC_BOOTSTRAP=1 for these two builds only
# (as the Linux kernel builds its Rust code): no other toolchain is needed.
# Measured: aarch64 1,602,640 → 1,365,824 B, x86_64 2,128,504 → 1,843,064
# B; the supervision bench's CPU per cycle and start latency unchanged
# within its noise.
AGENT_LINK := -C linker=rust-lld -C link-arg=-T$(CURDIR)/.cargo/agent-link.ld -C link-arg=--no-eh-frame-hdr
AGENT_PROFILE := CARGO_PROFILE_RELEASE_PANIC=abort RUSTC_BOOTSTRAP=1 \
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$(AGENT_LINK)" \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$(AGENT_LINK)"
AGENT_STD := -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size

# Static x86_64 agent: no server features, musl, size-tuned release profile.
agent:
	$(AGENT_PROFILE) $(CARGO) build $(AGENT_STD) --release --no-default-features --bin k8s4r-agent --target $(X86_MUSL)
	@ls -l target/$(X86_MUSL)/release/k8s4r-agent

# Static aarch64 agent, linked with the toolchain's rust-lld (.cargo/config.toml).
cross: agent
	$(AGENT_PROFILE) $(CARGO) build $(AGENT_STD) --release --no-default-features --bin k8s4r-agent --target $(ARM_MUSL)
	@ls -l target/$(ARM_MUSL)/release/k8s4r-agent

tools:
	bash .ci/install-tools.sh

# Everything: format and lint gates, no import cycles between source files
# (.ci/cycles.py, known ones in .ci/cycles-allowed.txt), the agent's small
# build, all tests.
test: tools cycles
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --lib --bins -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	$(MAKE) cross
	$(CARGO) test --no-default-features --lib
	$(CARGO) test
	$(MAKE) test-aarch64

# The agent's own tests as aarch64 binaries under qemu-user, each run with a
# time bound (why: .ci/test-aarch64.sh).
test-aarch64:
	CARGO="$(CARGO)" bash .ci/test-aarch64.sh

# Faults, bad input, isolation: one table (target/reliability.md).
reliability: cross
	bash .ci/reliability.sh

# The main job: control plane (SQLite) + connected agent + a Job through Envoy.
demo: tools
	bash examples/demo.sh

# Benchmarks (never timed tests), side by side with references measured in
# the same run: supervision vs s6 and supervisord, agent footprint, proxy
# cost, end to end, link bytes (before -> now: tests/link_before.json), fleet
# load on SQLite and etcd. Every benchmark writes
# target/bench/<name>.json; `k8s4r bench report` makes target/bench/report.md.
# A failing benchmark does not stop the others; its section says "not run"
# and make fails at the end. Knobs: K8S4R_BENCH_IDLE_SECS (60),
# K8S4R_BENCH_CYCLES (1000), K8S4R_BENCH_CYCLE_SECS (60), K8S4R_BENCH_RESTARTS (30),
# K8S4R_BENCH_LEAK_CYCLES (10000), K8S4R_BENCH_LEAK_SECS (150).
bench: cross
	@rm -rf target/bench && mkdir -p target/bench
	@echo "== agent binaries (stripped, static) and what they are made of"
	@ls -l target/$(X86_MUSL)/release/k8s4r-agent target/$(ARM_MUSL)/release/k8s4r-agent
	$(CARGO) tree --no-default-features -e normal --prefix depth | sort -u -k1,1n | head -40
	-$(CARGO) test --release --no-default-features --test agent_bench -- --ignored --nocapture
	-$(CARGO) test --release --test supervision_bench -- --ignored --nocapture --test-threads=1
	-$(CARGO) test --release --test envoy_bench -- --ignored --nocapture
	-$(CARGO) test --release --test e2e_bench -- --ignored --nocapture
	cp tests/link_before.json target/bench/link-before.json
	-$(CARGO) test --release --test link_bench -- --ignored --nocapture
	-$(CARGO) run --release --bin k8s4r -- bench robots 100 1000 10000
	-$(CARGO) run --release --bin k8s4r -- bench robots 1000 10000 --etcd --replicas 1,3 --out target/bench/server-etcd.json
	-$(CARGO) run --release --bin k8s4r -- bench rollout 1000
	-$(CARGO) run --release --bin k8s4r -- bench job-rollout 1000 --timeout 300s
	$(CARGO) run --release --bin k8s4r -- bench report
	@! grep -q "_not run_" target/bench/report.md || { echo "error: some benchmarks did not run (see report.md)"; exit 1; }

# The long run (issue 20; not part of `make test` or `make bench`):
# SOAK_ROBOTS simulated robots on one SQLite server for SOAK_DURATION, a new
# version of their Job every SOAK_CHURN, the server's RSS, CPU and store
# size sampled every minute into target/bench/soak.json and soak.svg (and
# `k8s4r bench report`'s Soak section); fails if the server's memory kept
# growing, a robot failed or a version did not reach every robot.
SOAK_ROBOTS ?= 10000
SOAK_DURATION ?= 1h
SOAK_CHURN ?= 5m
soak:
	$(CARGO) run --release --bin k8s4r -- bench soak $(SOAK_ROBOTS) --duration $(SOAK_DURATION) --churn $(SOAK_CHURN)
	$(CARGO) run --release --bin k8s4r -- bench report

# Where the aarch64 agent's bytes go (issue 20): by crate, then the largest
# functions (cargo-bloat, installed if missing; an unstripped build of the
# same release profile, in its own target dir so `make cross` stays as is).
bloat:
	@command -v cargo-bloat >/dev/null || $(CARGO) install cargo-bloat --locked
	$(AGENT_PROFILE) $(CARGO) bloat $(AGENT_STD) --release --no-default-features --bin k8s4r-agent --target $(ARM_MUSL) --target-dir target/bloat-std --crates -n 20
	$(AGENT_PROFILE) $(CARGO) bloat $(AGENT_STD) --release --no-default-features --bin k8s4r-agent --target $(ARM_MUSL) --target-dir target/bloat-std -n 40

# cargo-fuzz (nightly, installed if missing): each target of tests/fuzz/ for
# FUZZ_SECS (default 120) seconds; crash inputs land in
# tests/fuzz/regressions/<target>/ (replayed by `cargo test --test fuzz_api`)
# and fail the run.
fuzz:
	bash .ci/fuzz.sh

fmt:
	$(CARGO) fmt --all

# The cycle checker checks itself on small trees first, then src/.
cycles:
	python3 .ci/cycles.py --self-test
	python3 .ci/cycles.py

# Formatting, the lint set of Cargo.toml's [lints] (and clippy.toml), and
# the docs: a broken intra-doc link is a comment that no longer holds.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --lib --bins -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

# A robot root filesystem (busybox init + static agent) packed to flash.
image: agent
	bash cross/rootfs.sh --arch x86_64 --agent target/$(X86_MUSL)/release/k8s4r-agent \
	  --out target/rootfs-x86_64 --tar target/k8s4r-rootfs-x86_64.tar.gz

clean:
	$(CARGO) clean
