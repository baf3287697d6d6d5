#!/usr/bin/env bash
# README command 1: installs what is missing (nats-server, PostgreSQL), builds, and runs the whole system
# with `followup dev`: a private NATS and PostgreSQL under .followup/, all five services, their endpoints
# and a token printed. Ctrl-C stops everything. Extra arguments go to `followup dev` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/lib/ensure-deps.sh
cargo build --release -p followup --bin followup
exec "${CARGO_TARGET_DIR:-target}/release/followup" dev "$@"
