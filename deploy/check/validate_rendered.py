"""Checks of rendered ehr manifests that kubernetes-validate and checkov cannot make.

Run by scripts/check-deploy.sh inside its virtual environment:

    python validate_rendered.py --schemas DIR OVERLAY=RENDERED.yaml ...

1. Custom resources (PodMonitor, PrometheusRule of monitoring.coreos.com/v1) are validated
   against the committed JSON schemas in DIR, which refuse unknown fields, and every rule's
   PromQL expression is parsed. kubernetes-validate bundles only the built-in kinds.
2. The consortium's invariants hold in each overlay: n = 3f+1 replicas, a PodDisruptionBudget
   of 2f+1, a headless peer Service publishing not-ready addresses, parallel pod start, a
   ConfigMap with one node-<i>.toml per replica and consortium.json, and exactly one key Secret
   per replica, mounted only into the init container.
3. The init container's script, run with `sh` for every ordinal in a scratch directory standing
   in for the pod's volumes (filled from the rendered ConfigMap and Secrets), installs replica
   i's config and only replica i's keys with mode 0600, and refuses an ordinal outside the
   consortium.
4. When the ConfigMap holds real `ehr init-consortium` output (not the script's placeholders),
   each node.toml as the init script installed it fits the pod: replica id i, the paths the
   pod mounts (data, consortium file, secrets), listeners on all interfaces at the ports the Services and NetworkPolicy
   open, and peers ehr-<j>.ehr-peers:7000 in replica order; consortium.json lists n validators
   of the same chain.

Exits 1 and names every failure (overlay, resource, field, reason) when a check fails.
"""

import argparse
import base64
import json
import os
import pathlib
import re
import stat
import subprocess
import sys
import tempfile

import jsonschema
import promql_parser
import tomllib
import yaml

# Where the pod puts things (deploy/k8s/base/statefulset.yaml) and the ports it opens.
POD_DATA_DIR = "/var/lib/ehr"
POD_CONSORTIUM = "/etc/ehr/consortium.json"
POD_SECRETS_DIR = "/var/run/secrets/ehr"
HTTP_PORT, PEER_PORT, IPFS_PORT = 8080, 7000, 4001
PEER_HOST = "ehr-{i}.ehr-peers"
PLACEHOLDER = "placeholder written by scripts/check-deploy.sh"


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def exported_metric_names(text):
    """Sample names a Prometheus/OpenMetrics exposition can carry, from its TYPE lines and samples."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                base = parts[2].removesuffix("_total") if parts[3] == "counter" else parts[2]
                names.add(parts[2])
                names.update(base + sfx for sfx in suffixes.get(parts[3], []))
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def alert_metric_names(docs):
    """The ehr_* metric names the PrometheusRule expressions select."""
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and (node.name or "").startswith("ehr_"):
            names.add(node.name)
        return True

    for doc in docs:
        if doc.get("kind") != "PrometheusRule":
            continue
        for group_doc in doc.get("spec", {}).get("groups", []):
            for rule in group_doc.get("rules", []):
                try:
                    promql_parser.walk(promql_parser.parse(rule.get("expr", "")), visit)
                except Exception:  # reported by check_custom_resources
                    pass
    return names


def check_custom_resources(docs, schemas, fail):
    for doc in docs:
        api = doc.get("apiVersion", "")
        if "/" not in api or "." not in api.split("/")[0]:
            continue  # a built-in kind: kubernetes-validate's job
        group, version = api.split("/")
        if group.endswith(".k8s.io"):
            continue  # built-in API groups (networking.k8s.io ...) have bundled schemas
        schema_file = schemas / f"{doc['kind'].lower()}.{group}.{version}.json"
        if not schema_file.is_file():
            fail(name_of(doc), f"no committed schema for {doc['kind']} ({api}): add {schema_file.name}")
            continue
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        validator = jsonschema.Draft7Validator(schema)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            field = ".".join(str(p) for p in err.absolute_path) or "(document)"
            fail(name_of(doc), f"{field}: {err.message}")
        if doc.get("kind") == "PrometheusRule":
            for group_doc in doc.get("spec", {}).get("groups", []):
                for rule in group_doc.get("rules", []):
                    label = rule.get("alert") or rule.get("record")
                    try:
                        promql_parser.parse(rule.get("expr", ""))
                    except Exception as e:  # the parser raises ValueError with its position
                        fail(name_of(doc), f"rule {label}: expr is not valid PromQL: {e}")


def check_consortium(docs, fail):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    sets = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "ehr"]
    if len(sets) != 1:
        fail("StatefulSet/ehr", f"expected exactly one, found {len(sets)}")
        return
    sts = sets[0]
    spec = sts["spec"]
    n = spec.get("replicas", 1)
    f = (n - 1) // 3
    where = "StatefulSet/ehr"
    if n < 4 or n != 3 * f + 1:
        fail(where, f"spec.replicas: {n} is not 3f+1 with f >= 1 (4, 7, 10 ...)")
    if spec.get("podManagementPolicy") != "Parallel":
        fail(where, "spec.podManagementPolicy: must be Parallel (Ready needs 2f+1 replicas up)")

    pdbs = by_kind.get("PodDisruptionBudget", [])
    if len(pdbs) != 1 or pdbs[0]["spec"].get("minAvailable") != 2 * f + 1:
        got = [p["spec"].get("minAvailable") for p in pdbs]
        fail("PodDisruptionBudget", f"spec.minAvailable: expected one PDB with 2f+1 = {2 * f + 1}, found {got}")

    peers = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == spec.get("serviceName")]
    if not peers:
        fail(where, f"spec.serviceName: no Service named {spec.get('serviceName')!r}")
    else:
        svc = peers[0]["spec"]
        if svc.get("clusterIP") != "None" or svc.get("publishNotReadyAddresses") is not True:
            fail(name_of(peers[0]), "spec: must be headless with publishNotReadyAddresses: true")

    pod = spec["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}

    source = volumes.get("config-source", {}).get("configMap", {}).get("name")
    if source not in config_maps:
        fail(where, f"volumes.config-source: ConfigMap {source!r} is not in the rendered overlay")
    else:
        keys = set(config_maps[source].get("data", {}))
        want = {"consortium.json"} | {f"node-{i}.toml" for i in range(n)}
        if keys != want:
            fail(name_of(config_maps[source]), f"data: keys {sorted(keys)}, expected {sorted(want)}")

    key_volumes = {name for name in volumes if name.startswith("keys-")}
    want_volumes = {f"keys-{i}" for i in range(n)}
    if key_volumes != want_volumes:
        fail(where, f"volumes: key volumes {sorted(key_volumes)}, expected one per replica {sorted(want_volumes)}")
    for i in range(n):
        vol = volumes.get(f"keys-{i}", {})
        secret_name = vol.get("secret", {}).get("secretName")
        if secret_name not in secrets:
            fail(where, f"volumes.keys-{i}: Secret {secret_name!r} is not in the rendered overlay")
            continue
        if not secret_name.startswith(f"ehr-node-{i}-keys"):
            fail(where, f"volumes.keys-{i}: mounts {secret_name}, which is not replica {i}'s Secret")
        data = secrets[secret_name].get("data", {})
        if not data or not all(k.endswith(".key") for k in data):
            fail(name_of(secrets[secret_name]), f"data: expected *.key files, found {sorted(data)}")

    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    init = inits.get("install-config")
    if init is None:
        fail(where, "initContainers: install-config is missing")
    else:
        mounts = {m["name"]: m["mountPath"] for m in init.get("volumeMounts", [])}
        for i in range(n):
            if mounts.get(f"keys-{i}") != f"/run/ehr-keys/node-{i}":
                fail(where, f"initContainers.install-config: keys-{i} must be mounted at /run/ehr-keys/node-{i}")
    for c in pod.get("containers", []):
        for m in c.get("volumeMounts", []):
            if m["name"].startswith("keys-") or m["name"] == "config-source":
                fail(where, f"containers.{c['name']}: mounts {m['name']}; only the init container may")


def check_node_configs(where, consortium_text, installed, n, fail):
    """Compares the node.toml each replica's init script installed with the pod and consortium."""
    try:
        consortium = json.loads(consortium_text)
    except ValueError as e:
        fail(where, f"data.consortium.json: not JSON ({e})")
        return
    chain = consortium.get("chain_id")
    validators = consortium.get("validators", [])
    if len(validators) != n:
        fail(where, f"data.consortium.json: {len(validators)} validators for {n} replicas")
    for i in range(n):
        key = f"node-{i}.toml (as installed)"
        try:
            cfg = tomllib.loads(installed[i])
        except tomllib.TOMLDecodeError as e:
            fail(where, f"{key}: not TOML ({e})")
            continue

        def want(field, got, expected, key=key):
            if got != expected:
                fail(where, f"{key}: {field} is {got!r}, the pod needs {expected!r}")

        want("replica_id", cfg.get("replica_id"), i)
        want("chain_id", cfg.get("chain_id"), chain)
        want("data_dir", cfg.get("data_dir"), POD_DATA_DIR)
        want("consortium", cfg.get("consortium"), POD_CONSORTIUM)
        want("secrets_dir", cfg.get("secrets_dir"), POD_SECRETS_DIR)
        want("http.listen", cfg.get("http", {}).get("listen"), f"0.0.0.0:{HTTP_PORT}")
        ledger = cfg.get("ledger", {})
        want("ledger.listen", ledger.get("listen"), f"0.0.0.0:{PEER_PORT}")
        want(
            "ledger.peers",
            ledger.get("peers"),
            [f"{PEER_HOST.format(i=j)}:{PEER_PORT}" for j in range(n)],
        )
        listen = cfg.get("ipfs", {}).get("listen", [])
        if f"/ip4/0.0.0.0/tcp/{IPFS_PORT}" not in listen:
            fail(where, f"{key}: ipfs.listen {listen!r} lacks /ip4/0.0.0.0/tcp/{IPFS_PORT}")
        others = {f"/dns4/{PEER_HOST.format(i=j)}/tcp/{IPFS_PORT}/p2p/" for j in range(n) if j != i}
        for addr in cfg.get("ipfs", {}).get("bootstrap", []):
            if not any(addr.startswith(o) for o in others):
                fail(where, f"{key}: ipfs.bootstrap {addr!r} is not another replica's swarm address")


def check_init_script(docs, fail):
    """Runs the init container's script for every ordinal in a scratch root standing in for the
    pod's volumes; checks what it installs, then the installed configs (real output only)."""
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    n = sts["spec"]["replicas"]
    init = next(c for c in pod["initContainers"] if c["name"] == "install-config")
    volumes = {v["name"]: v for v in pod["volumes"]}
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config_map = by_name[("ConfigMap", volumes["config-source"]["configMap"]["name"])]
    where = "StatefulSet/ehr: initContainers.install-config"
    installed = {}
    for ordinal in range(n + 1):
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            # Every absolute path the script names (all under /run, /etc or /var, where the
            # volumes are mounted) is moved under the scratch root, in one pass.
            script = re.sub(
                r"(?<![\w./-])/(run|etc|var)/", lambda m: f"{root}{m.group(0)}", init["command"][-1]
            )
            mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
            for name, mount in mounts.items():
                target = root / mount.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                vol = volumes.get(name, {})  # claims (volumeClaimTemplates) stay empty
                if "configMap" in vol and not vol["configMap"].get("optional"):
                    for k, v in by_name[("ConfigMap", vol["configMap"]["name"])]["data"].items():
                        (target / k).write_text(v, encoding="utf-8")
                if "secret" in vol:
                    for k, v in by_name[("Secret", vol["secret"]["secretName"])]["data"].items():
                        (target / k).write_bytes(base64.b64decode(v))
                        os.chmod(target / k, 0o440)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_NAME": f"ehr-{ordinal}"}
            done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
            if ordinal == n:
                if done.returncode == 0:
                    fail(where, f"accepted pod ehr-{n}, outside a consortium of {n}")
                continue
            if done.returncode != 0:
                fail(where, f"failed for replica {ordinal}: {done.stderr.strip()}")
                continue
            config_dir = root / mounts["config"].lstrip("/")
            text = (config_dir / "node.toml").read_text(encoding="utf-8")
            installed[ordinal] = text.replace(str(root), "")
            secret = by_name[("Secret", volumes[f"keys-{ordinal}"]["secret"]["secretName"])]
            keys_dir = root / mounts["secrets"].lstrip("/")
            got = sorted(p.name for p in keys_dir.iterdir())
            if got != sorted(secret["data"]):
                fail(where, f"replica {ordinal} got key files {got}, expected {sorted(secret['data'])}")
            for k, v in secret["data"].items():
                path = keys_dir / k
                if not path.is_file():
                    continue
                if path.read_bytes() != base64.b64decode(v):
                    fail(where, f"replica {ordinal}: {k} is not replica {ordinal}'s key")
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode != 0o600:
                    fail(where, f"replica {ordinal}: {k} has mode {mode:o}, the node needs 600")
            copied = (config_dir / "consortium.json").read_text(encoding="utf-8")
            if copied != config_map["data"]["consortium.json"]:
                fail(where, f"replica {ordinal} got a consortium.json other than the ConfigMap's")
    data = config_map.get("data", {})
    if len(installed) == n and not any(PLACEHOLDER in v for v in data.values()):
        check_node_configs(name_of(config_map), data["consortium.json"], installed, n, fail)
        print(f"checked {n} installed node.toml files of real init-consortium output")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", type=pathlib.Path, required=True)
    parser.add_argument(
        "--metrics",
        type=pathlib.Path,
        help="a /metrics exposition of the node: every ehr_* metric an alert uses must be in it",
    )
    parser.add_argument("rendered", nargs="+", help="OVERLAY=FILE")
    args = parser.parse_args()
    failures = 0
    for item in args.rendered:
        overlay, _, path = item.partition("=")

        def fail(resource, reason, overlay=overlay):
            nonlocal failures
            failures += 1
            print(f"FAIL {overlay}: {resource}: {reason}")

        docs = load(path)
        check_custom_resources(docs, args.schemas, fail)
        check_consortium(docs, fail)
        check_init_script(docs, fail)
        used = alert_metric_names(docs)
        if used:
            print(f"{overlay}: alerts use {', '.join(sorted(used))}")
            if args.metrics:
                exported = exported_metric_names(args.metrics.read_text(encoding="utf-8"))
                for name in sorted(used - exported):
                    fail("PrometheusRule", f"alerts use {name}, which the node's /metrics does not export")
    if failures:
        print(f"{failures} consortium/custom-resource check(s) failed")
        return 1
    print(f"consortium and custom-resource checks passed ({len(args.rendered)} overlays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
