# regimage: `make test` is what CI runs (through .ci/run, which installs the packages first).
CARGO ?= cargo

.PHONY: all build release user-data test lint unit fmt clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The main job on built-in defaults: a cloud-init user-data file at ./user-data.
user-data: release
	./target/release/regimage build --format user-data -o user-data

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Unit tests, the CLI and user-data tests, and the root-only tests with real nginx,
# the Distribution registry, skopeo and cloud-init (marked #[ignore] for plain `cargo test`).
unit:
	$(CARGO) test --all-targets -- --include-ignored

test: lint unit

clean:
	$(CARGO) clean
