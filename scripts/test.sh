#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing
# (scripts/install-deps.sh: as root, from Debian's packages). Under CI=true, tests that
# need root fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

if [ "${CI:-}" = true ]; then
  export SHADOWCOPY_TEST_REQUIRE_ROOT=1
fi

cargo fmt --all -- --check
cargo test --workspace --locked
