# regimage: `make test` is what CI runs (through .ci/run). It installs what is missing first
# (scripts/install-test-deps.sh; needs root when something is missing).
CARGO ?= cargo

.PHONY: all build release user-data test deps garage garage-background test-build lint unit e2e bench fmt clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The main job on built-in defaults: a cloud-init user-data file at ./user-data.
user-data: release
	./target/release/regimage build user-data -o user-data

fmt:
	$(CARGO) fmt

# Debian packages and Rust components the tests use, installed only when missing (root).
deps:
	./scripts/install-test-deps.sh

# Garage 2.5.0, the S3 store the S3-storage tests run as a 3-node cluster on loopback
# (tests/common/garage.rs): built once per machine into $(REGIMAGE_TEST_CACHE) (default
# /var/cache/regimage-test) by scripts/build-garage.sh (cargo install; slow the first time
# only), an instant no-op after.
garage: deps
	./scripts/build-garage.sh

# The same, started detached at the beginning of `make test` so its first build (about 15
# minutes of 2 cores) overlaps lint and the tests' compile; `garage` waits for it.
garage-background: deps
	./scripts/build-garage.sh --background

# shellcheck (Debian package `shellcheck`): the guest shell that cloud-init runs, and image/'s
# recipes (-x follows their `. lib.sh`).
lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	shellcheck -x src/cloudinit/guest/*.sh image/*.sh scripts/*.sh bench/*.sh

# Unit tests, the CLI and user-data tests, and the root-only tests with real nginx,
# the Distribution registry, skopeo, cloud-init, and Podman, dockerd and containerd in network
# namespaces (tests/clients.rs), the registry on a 3-node Garage cluster (tests/s3_registry.rs)
# (marked #[ignore] for plain `cargo test`).
# The VM tests (tests/e2e.rs) are `make e2e`.
# The tests on Garage (their names say garage) run last, after `garage`, so the others run
# while a background build of Garage finishes.
unit: deps
	$(CARGO) test --all-targets -- --include-ignored --skip e2e_ --skip garage
	./scripts/build-garage.sh
	$(CARGO) test --test cluster_loopback --test s3_registry -- --include-ignored

# The booted-VM end-to-end test (root; QEMU under TCG; builds or reuses image/'s cached
# Debian base and registry fixture): the user-data path and the qcow2 path side by side,
# one VM each, then a second machine from the baked image (first without a network) in the
# slot the user-data test frees (REGIMAGE_E2E_VMS=1 runs one VM at a time). Stage timings:
# target/e2e-timings.json.
# The guest gets the release binary (8 MB; a debug one is 160 MB and slow under TCG).
e2e: deps garage
	$(CARGO) build --release
	REGIMAGE_E2E_BINARY="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/regimage" \
	  $(CARGO) test --test e2e -- --ignored --test-threads=2 --nocapture

# Benchmarks (issue 9; not part of `make test`; root, no VM): the proxy against the registry
# on loopback (a 1 GiB blob up and down), first-boot PKI against the guide's openssl
# (bench/guide-pki.sh), `build user-data`; A/B alternating, medians, the last e2e timings.
# Writes target/bench.json. Knobs: BENCH_BLOB_MIB (1024), BENCH_ROUNDS (5), BENCH_PKI_ROUNDS
# (5), BENCH_BUILD_ROUNDS (3), BENCH_MAX_SECONDS (3600), BENCH_ONLY (proxy,pki,user-data,e2e),
# BENCH_PROXY_BASELINE (another regimage binary: its proxy config in the same rounds);
# see benches/bench.rs.
bench: deps
	$(CARGO) bench --bench bench

# The test binaries, without running them.
test-build:
	$(CARGO) test --all-targets --no-run

# Everything CI runs: lint, the tests without VMs, then the VM tests. Garage's first build
# runs in the background from the start; lint, the test binaries and the release binary are
# built meanwhile, and `unit` then waits for it (README "Tests").
test: deps garage-background lint test-build release unit e2e

clean:
	$(CARGO) clean
