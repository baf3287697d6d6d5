#!/usr/bin/env bash
# Creates the Secrets overlays/dev refers to, with fresh random passwords and keys, in the current kubectl
# context. Values are kept under DIR (default .followup/k8s-dev, git-ignored) so a rerun changes nothing and
# `followup token --dir DIR` prints staff tokens the cluster accepts. Production Secrets are the
# operator's: deploy/README.md, "Secrets".
#   usage: deploy/kustomize/overlays/dev/secrets.sh [DIR]        (NAMESPACE=followup by default)
set -euo pipefail
dir=${1:-.followup/k8s-dev}
ns=${NAMESPACE:-followup}
services=(plans cases engagement scheduler notifications)
command -v openssl >/dev/null || { echo "secrets.sh: needs openssl" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "secrets.sh: needs kubectl" >&2; exit 1; }

umask 077
mkdir -p "$dir/keys"
# The same layout as `followup dev` (keys/<name>.pem, keys/<name>.pub.pem): `followup token --dir` reads it.
for pair in staff portal; do
  if [[ ! -f "$dir/keys/$pair.pem" ]]; then
    openssl genpkey -algorithm ed25519 -out "$dir/keys/$pair.pem"
    openssl pkey -in "$dir/keys/$pair.pem" -pubout -out "$dir/keys/$pair.pub.pem"
  fi
done
for name in superuser "${services[@]}"; do
  [[ -f "$dir/$name.password" ]] || openssl rand -hex 24 >"$dir/$name.password"
done

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
apply() { kubectl -n "$ns" create secret generic "$@" --dry-run=client -o yaml | kubectl -n "$ns" apply -f -; }

apply jwt-public-keys --from-file=jwt.pub.pem="$dir/keys/staff.pub.pem"
apply portal-signing-key --from-file=portal.pem="$dir/keys/portal.pem"
apply portal-public-keys --from-file=portal.pub.pem="$dir/keys/portal.pub.pem"
apply postgres-dev --from-file=superuser-password="$dir/superuser.password" \
  $(for s in "${services[@]}"; do printf -- '--from-file=%s-password=%s ' "$s" "$dir/$s.password"; done)
for s in "${services[@]}"; do
  apply "$s-database" --from-literal=url="postgres://followup_$s:$(cat "$dir/$s.password")@postgres:5432/followup_$s"
done
# No provider credentials in dev (messages to SMS and email fail with "no provider configured"): add
# FOLLOWUP_NOTIFICATIONS__SMS__AUTH_TOKEN, __SMTP__URL, … here to send real ones.
[[ -f "$dir/unsubscribe.key" ]] || openssl rand -hex 32 >"$dir/unsubscribe.key"
apply notifications-providers \
  --from-literal=FOLLOWUP_NOTIFICATIONS__UNSUBSCRIBE_SIGNING_KEY="$(cat "$dir/unsubscribe.key")"
echo "Secrets ready in namespace $ns. Staff token: followup token --dir $dir" >&2
