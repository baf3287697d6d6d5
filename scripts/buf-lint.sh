#!/usr/bin/env bash
# Lints every .proto under proto/ with buf (STANDARD rules, see proto/buf.yaml).
# buf comes from the npm package @bufbuild/buf, pinned in proto/package.json + package-lock.json and
# installed with `npm ci` into proto/node_modules the first time (or when the pinned version changed).
# Works from any directory; exits non-zero when buf reports a finding or cannot run.
set -euo pipefail

proto_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../proto" && pwd)"
buf="$proto_dir/node_modules/.bin/buf"
want="$(node -p "require('$proto_dir/package.json').devDependencies['@bufbuild/buf']")"

if [[ ! -x "$buf" ]] || [[ "$("$buf" --version 2>/dev/null)" != "$want" ]]; then
  command -v npm >/dev/null || { echo "buf-lint: npm is required (Debian package: npm)" >&2; exit 2; }
  echo "buf-lint: installing @bufbuild/buf $want into $proto_dir/node_modules" >&2
  # The package's postinstall only swaps a JS shim for the binary; the shim works without it.
  (cd "$proto_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

cd "$proto_dir"
"$buf" lint
echo "buf-lint: ok ($("$buf" --version), STANDARD)"
