#!/usr/bin/env bash
# README command 2: every check CI runs, in the order that fails fastest.
#   formatting → lints (clippy, buf, AsyncAPI) → all tests of the workspace against real PostgreSQL and NATS.
# Installs what is missing. Tests need a PostgreSQL server they can create databases on: the one in
# FOLLOWUP_TEST_DATABASE_URL, else one on 127.0.0.1:5432 with trust auth, else a private one started
# here (through `followup dev --infra-only`) and stopped at the end. Each test makes its own database
# and its own nats-server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FOLLOWUP_TEST_TOOLS=1
# engagement's browser test drives headless Chromium through chromedriver.
export FOLLOWUP_EXTRA_PACKAGES="${FOLLOWUP_EXTRA_PACKAGES:-} chromium chromium-driver"
bash scripts/lib/ensure-deps.sh

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "buf lint"
bash scripts/buf-lint.sh

step "AsyncAPI: docs/asyncapi.json validated (the tests check it is the generated one)"
bash scripts/asyncapi-validate.sh

step "deploy: kustomize render, schema validation, policy tests, hadolint, checkov"
bash deploy/validate.sh

infra_pid=""
cleanup() {
  if [[ -n "$infra_pid" ]]; then
    kill -INT "$infra_pid" 2>/dev/null || true
    wait "$infra_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [[ -z "${FOLLOWUP_TEST_DATABASE_URL:-}" ]]; then
  default_url="postgres://postgres@127.0.0.1:5432/postgres"
  if psql "$default_url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    export FOLLOWUP_TEST_DATABASE_URL="$default_url"
  else
    step "no PostgreSQL on 127.0.0.1:5432: starting a private one"
    cargo build -q -p followup --bin followup
    mkdir -p .followup
    out=.followup/test-infra.out
    : >"$out"
    "${CARGO_TARGET_DIR:-target}/debug/followup" dev --infra-only --dir .followup/test-infra >"$out" 2>&1 &
    infra_pid=$!
    for _ in $(seq 1 120); do
      url=$(sed -n 's/^DATABASE_URL=//p' "$out")
      [[ -n "$url" ]] && break
      kill -0 "$infra_pid" 2>/dev/null || { cat "$out" >&2; exit 1; }
      sleep 0.5
    done
    [[ -n "${url:-}" ]] || { echo "private PostgreSQL did not start" >&2; cat "$out" >&2; exit 1; }
    export FOLLOWUP_TEST_DATABASE_URL="$url"
  fi
fi
echo "tests use PostgreSQL at ${FOLLOWUP_TEST_DATABASE_URL}" >&2

step "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
