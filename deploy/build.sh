#!/usr/bin/env bash
# The release build of every Followup binary, in one place: deploy/Dockerfile runs exactly this, and so
# does anyone packaging Followup without a container engine. Usage: deploy/build.sh OUT_DIR
#   OUT_DIR receives followup (the CLI) and followup-<service> for each of the five services.
set -euo pipefail
out=${1:?usage: deploy/build.sh OUT_DIR}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Keep in step with the workspace's [[bin]] targets: deploy/tests/test_manifests.py checks it.
binaries=(followup followup-plans followup-cases followup-engagement followup-scheduler followup-notifications)

args=()
for bin in "${binaries[@]}"; do args+=(--bin "$bin"); done
# --locked: the image is built from Cargo.lock as committed, never from a fresh resolution.
cargo build --release --locked "${args[@]}"

install -d "$out"
for bin in "${binaries[@]}"; do
  install -m 0755 "target/release/$bin" "$out/$bin"
done
