#!/usr/bin/env bash
# Installs or upgrades Followup in the order that keeps it serving: migrations first, then the services.
#   usage: deploy/rollout.sh OVERLAY_DIR          e.g. deploy/rollout.sh deploy/kustomize/overlays/production
# 1. everything but the services' Deployments, Services, PDBs and autoscalers (namespace, ConfigMaps,
#    ServiceAccounts, NetworkPolicies, NATS, the migration Jobs), the previous migration Jobs deleted first
#    since a Job's pod template cannot change;
# 2. wait for every migration Job to complete: a failed migration stops here, old pods keep serving;
# 3. everything, then wait for each Deployment's rollout.
set -euo pipefail
overlay=${1:?usage: deploy/rollout.sh OVERLAY_DIR}
ns=${NAMESPACE:-followup}
timeout=${ROLLOUT_TIMEOUT:-10m}
migration=app.kubernetes.io/component=migration

kubectl -n "$ns" delete job -l "$migration" --ignore-not-found --wait=true 2>/dev/null || true
kubectl apply -k "$overlay" -l 'app.kubernetes.io/component!=server'
kubectl -n "$ns" wait --for=condition=complete job -l "$migration" --timeout="$timeout"
kubectl apply -k "$overlay"
for deployment in $(kubectl -n "$ns" get deployment -l app.kubernetes.io/part-of=followup -o name); do
  kubectl -n "$ns" rollout status "$deployment" --timeout="$timeout"
done
