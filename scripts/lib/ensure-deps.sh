#!/usr/bin/env bash
# Installs what Followup needs from Debian's packages when it is missing: nats-server and PostgreSQL;
# for the tests (FOLLOWUP_TEST_TOOLS=1) also npm (buf) and python3-venv (deploy validation); and any
# FOLLOWUP_EXTRA_PACKAGES. Idempotent and quiet when everything is there. Run by scripts/dev.sh and
# scripts/test.sh. Needs root or sudo only when something must be installed.
set -euo pipefail

missing=()
have_nats() { command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]]; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || command -v postgres >/dev/null 2>&1; }

have_nats || missing+=(nats-server)
have_postgres || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if [[ "${FOLLOWUP_TEST_TOOLS:-0}" == 1 ]]; then
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # deploy/validate.sh makes a virtualenv; Debian splits ensurepip into python3-venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi
for extra in ${FOLLOWUP_EXTRA_PACKAGES:-}; do
  dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
done

if (( ${#missing[@]} > 0 )); then
  echo "followup: installing missing Debian packages: ${missing[*]}" >&2
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "followup: need root or sudo to install: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # The postgresql package's post-install may start a cluster of its own; Followup does not use it.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || {
  echo "followup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}
