#!/usr/bin/env bash
# Installs or upgrades Followup in the order that keeps it serving: migrations first, then the services.
#   usage: deploy/rollout.sh OVERLAY_DIR          e.g. deploy/rollout.sh deploy/kustomize/overlays/production
# 1. everything but the services' Deployments, Services, PDBs and autoscalers (namespace, ConfigMaps,
#    ServiceAccounts, NetworkPolicies, NATS, the migration Jobs), the previous migration Jobs deleted first
#    since a Job's pod template cannot change;
# 2. wait for every migration Job: a failed one stops the upgrade here, with the old version still serving;
# 3. everything, then wait for each Deployment's rollout.
# NAMESPACE (default followup) must match the overlay's; ROLLOUT_TIMEOUT_SECS bounds each wait (600).
set -euo pipefail
overlay=${1:?usage: deploy/rollout.sh OVERLAY_DIR}
ns=${NAMESPACE:-followup}
timeout=${ROLLOUT_TIMEOUT_SECS:-600}
migration=app.kubernetes.io/component=migration

kubectl -n "$ns" delete job -l "$migration" --ignore-not-found --wait=true 2>/dev/null || true
kubectl apply -k "$overlay" -l 'app.kubernetes.io/component!=server'

deadline=$((SECONDS + timeout))
for job in $(kubectl -n "$ns" get job -l "$migration" -o name); do
  while :; do
    state=$(kubectl -n "$ns" get "$job" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
    case " $state " in
      *" Complete "*) echo "$job: done" >&2; break ;;
      *" Failed "*)
        echo "$job failed; the running version is untouched. Why: kubectl -n $ns logs $job" >&2
        exit 1
        ;;
    esac
    if ((SECONDS >= deadline)); then
      echo "$job still running after ${timeout}s: kubectl -n $ns describe $job" >&2
      exit 1
    fi
    sleep 2
  done
done

kubectl apply -k "$overlay"
for deployment in $(kubectl -n "$ns" get deployment -l app.kubernetes.io/part-of=followup -o name); do
  kubectl -n "$ns" rollout status "$deployment" --timeout="${timeout}s"
done
