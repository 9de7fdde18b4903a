#!/usr/bin/env bash
# Runs the pod layout of deploy/k8s without Kubernetes: N real `ehr node` processes, each in its
# own network namespace standing in for a pod, each configured by the StatefulSet's own init
# script (taken from deploy/k8s/base/statefulset.yaml) from real `ehr init-consortium` output,
# finding its peers by the names ehr-<j>.ehr-peers on ports 7000, 4001 and 8080. It waits until
# every replica answers /readyz with 200 (or gives up after 120 s), prints each replica's
# readiness, its ledger metrics and any IPFS swarm dial errors, and removes everything it made.
#
# A manual check (not part of the test suite): it needs root (network namespaces, and
# /etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts), iproute2 and curl.
# The namespaces talk over a private bridge of their own (10.231.0.0/24); nothing leaves it.
#
#   deploy/check/pod-sim.sh path/to/ehr [N=4]
set -euo pipefail

BIN="$(realpath "${1:?usage: pod-sim.sh path/to/ehr [N]}")"
N="${2:-4}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "pod-sim: needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null && command -v curl >/dev/null ||
  { echo "pod-sim: needs iproute2 and curl" >&2; exit 1; }
PY="$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/ehr-deploy-check/venv-*/bin/python 2>/dev/null | tail -1 || true)"
[ -x "$PY" ] || { echo "pod-sim: run scripts/check-deploy.sh once first (it installs the Python tools used here)" >&2; exit 1; }

TAG="ehrsim$$"
S="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for j in $(seq 0 $((N - 1))); do
    ip netns del "$TAG-$j" 2>/dev/null || true
    rm -rf "/etc/netns/$TAG-$j"
  done
  ip netns del "$TAG-hub" 2>/dev/null || true
  rm -rf "$S"
}
trap cleanup EXIT

"$BIN" init-consortium --nodes "$N" --out "$S/c" >/dev/null

# The init container's script, with its absolute paths moved under a pod's scratch root.
extract_init() {
  "$PY" - "$ROOT/deploy/k8s/base/statefulset.yaml" "$1" <<'PY'
import re, sys, yaml
doc = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d)
init = next(c for c in doc["spec"]["template"]["spec"]["initContainers"] if c["name"] == "install-config")
print(re.sub(r"(?<![\w./-])/(run|etc|var)/", lambda m: sys.argv[2] + m.group(0), init["command"][-1]))
PY
}

ip netns add "$TAG-hub"
ip -n "$TAG-hub" link add br0 type bridge
ip -n "$TAG-hub" link set br0 up
hosts="127.0.0.1 localhost"$'\n'
for j in $(seq 0 $((N - 1))); do hosts+="10.231.0.$((10 + j)) ehr-$j.ehr-peers"$'\n'; done

for j in $(seq 0 $((N - 1))); do
  ns="$TAG-$j"
  ip netns add "$ns"
  # Created inside the namespaces, so the names cannot collide with the host's interfaces.
  dev=eth0
  ip -n "$ns" link add "$dev" type veth peer name "h$j" netns "$TAG-hub"
  ip -n "$TAG-hub" link set "h$j" master br0 up
  ip -n "$ns" addr add "10.231.0.$((10 + j))/24" dev "$dev"
  ip -n "$ns" link set "$dev" up
  ip -n "$ns" link set lo up
  mkdir -p "/etc/netns/$ns"
  printf '%s' "$hosts" >"/etc/netns/$ns/hosts"

  # The pod's volumes as the kubelet fills them (Secret files group-readable, as with fsGroup).
  R="$S/pod-$j"
  mkdir -p "$R/run/ehr-config" "$R/run/ehr-hold" "$R/etc/ehr" "$R/var/run/secrets/ehr" "$R/var/lib/ehr"
  cp "$S/c/consortium.json" "$R/run/ehr-config/consortium.json"
  for i in $(seq 0 $((N - 1))); do
    cp "$S/c/node-$i/node.toml" "$R/run/ehr-config/node-$i.toml"
    mkdir -p "$R/run/ehr-keys/node-$i"
    cp "$S/c/node-$i/secrets/"*.key "$R/run/ehr-keys/node-$i/"
    chmod 0440 "$R/run/ehr-keys/node-$i/"*.key
  done
  extract_init "$R" >"$S/init-$j.sh"
  POD_NAME="ehr-$j" sh "$S/init-$j.sh"
  ip netns exec "$ns" env EHR_LOG_FORMAT=json "$BIN" node --config "$R/etc/ehr/node.toml" \
    >"$S/log-$j" 2>&1 &
  pids+=("$!")
done

ready=0
for t in $(seq 1 120); do
  ready=0
  for j in $(seq 0 $((N - 1))); do
    code="$(ip netns exec "$TAG-0" curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
      "http://ehr-$j.ehr-peers:8080/readyz" || true)"
    [ "$code" = 200 ] && ready=$((ready + 1))
  done
  [ "$ready" = "$N" ] && { echo "pod-sim: $N/$N replicas ready after ${t} s"; break; }
  sleep 1
done
for j in $(seq 0 $((N - 1))); do
  echo "ehr-$j /readyz: $(ip netns exec "$TAG-0" curl -s --max-time 2 "http://ehr-$j.ehr-peers:8080/readyz")"
  ip netns exec "$TAG-0" curl -s --max-time 2 "http://ehr-$j.ehr-peers:8080/metrics" |
    grep -E '^ehr_(ledger_height|ledger_view|index_height|replication_queue) ' | sed 's/^/    /'
  dial_errors="$(grep -c 'bootstrap peer unreachable' "$S/log-$j" || true)"
  echo "    IPFS bootstrap dial failures in the log: $dial_errors"
  if [ "$dial_errors" != 0 ]; then
    grep -m1 'bootstrap peer unreachable' "$S/log-$j" | sed 's/^/    /' | cut -c1-400
  fi
done
[ "$ready" = "$N" ] || { echo "pod-sim: only $ready/$N replicas became ready" >&2; exit 1; }
