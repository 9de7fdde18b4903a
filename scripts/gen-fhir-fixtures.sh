#!/usr/bin/env bash
# Regenerates the FHIR fixtures and the token search-parameter table of `src/fhir/`.
#
# Outputs (all committed):
#   src/fhir/token_params.tsv          token search parameters of the clinical resource types,
#                                      compiled from the official R4 SearchParameter-*.json and
#                                      typed with the official StructureDefinition-*.json
#   tests/fixtures/fhir/carebundle/    synthetic US Core data from carebundle 0.5.0
#                                      (one transaction Bundle, one Bulk Data NDJSON export)
#   tests/fixtures/fhir/r4-examples/   a few official HL7 R4 examples (CC0-1.0)
#   tests/fixtures/fhir/expected/      the keywords of each fixture, from a small reference
#                                      implementation in Python below (a differential test)
#
# Inputs are pinned versions fetched with the ordinary clients (pip, npm pack) into a temporary
# directory that is removed afterwards. Everything is synthetic: carebundle marks every resource
# with the HTEST security label and its narratives say "not a real person"; the HL7 examples are
# the specification's own examples. Both generators are deterministic, so re-running this script
# reproduces the committed bytes (check with `git diff --stat` afterwards).
#
# Needs: bash, python3 (>= 3.9, with venv), npm, tar.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CAREBUNDLE_VERSION="0.5.0"
R4_EXAMPLES="hl7.fhir.r4.examples@4.0.1"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "== carebundle ${CAREBUNDLE_VERSION}"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet "carebundle==${CAREBUNDLE_VERSION}"
# One diabetic patient as a transaction Bundle (conditions, medications, labs, vitals).
"$WORK/venv/bin/carebundle" generate --profile type2_diabetes --count 1 --seed 42 --sex F \
  --age-range 40-70 --out "$WORK/cb-bundle"
# A small mixed cohort as a Bulk Data export (one NDJSON file per resource type), lean panels.
"$WORK/venv/bin/carebundle" generate --profile mixed --count 3 --seed 7 --sex mixed \
  --age-range 18-90 --panels lean --format ndjson --out "$WORK/cb-ndjson"

echo "== ${R4_EXAMPLES}"
(cd "$WORK" && npm pack --silent "$R4_EXAMPLES" >/dev/null)
mkdir -p "$WORK/r4"
tar xzf "$WORK"/hl7.fhir.r4.examples-*.tgz -C "$WORK/r4" --strip-components=1 \
  --wildcards 'package/SearchParameter-*' 'package/StructureDefinition-*' \
  'package/Observation-*' 'package/Immunization-*' 'package/Procedure-*' \
  'package/Encounter-*' 'package/AllergyIntolerance-*' 'package/DiagnosticReport-*' \
  'package/Condition-*' 'package/MedicationRequest-*' 'package/Patient-*'

OUT="$ROOT/tests/fixtures/fhir"
rm -rf "$OUT/carebundle" "$OUT/r4-examples" "$OUT/expected"
mkdir -p "$OUT/carebundle" "$OUT/r4-examples"
cp "$WORK"/cb-bundle/*.json "$OUT/carebundle/"
# One NDJSON file with every resource of the export, in a fixed order of types.
for t in Patient Practitioner Encounter Condition AllergyIntolerance MedicationRequest \
  DiagnosticReport Observation; do
  if [ -f "$WORK/cb-ndjson/$t.ndjson" ]; then cat "$WORK/cb-ndjson/$t.ndjson"; fi
done >"$OUT/carebundle/export.ndjson"
for f in Observation-blood-pressure Observation-bloodgroup Immunization-protocol Procedure-example \
  Encounter-f001 AllergyIntolerance-example DiagnosticReport-f201 Condition-f204 \
  MedicationRequest-medrx0302 Patient-example; do
  cp "$WORK/r4/$f.json" "$OUT/r4-examples/"
done

echo "== token search-parameter table"
python3 - "$WORK/r4" "$ROOT/src/fhir/token_params.tsv" <<'PY'
"""Compile the R4 token search parameters of the clinical resources into JSON key paths.

Supported FHIRPath: dotted paths, unions `|`, `(path as Type)`, `path.ofType(Type)`. A parameter
whose expression uses anything else (where(), extension(), exists(), resolve(), operators) is
left out and listed in the table's header. Each path is typed with the StructureDefinitions:
a segment ending in `*` repeats (a JSON array), the leaf type says how to read the value.
"""
import glob
import json
import re
import sys

src, dst = sys.argv[1], sys.argv[2]

RESOURCES = [
    "AllergyIntolerance", "CarePlan", "Condition", "DiagnosticReport", "DocumentReference",
    "Encounter", "FamilyMemberHistory", "Immunization", "MedicationAdministration",
    "MedicationDispense", "MedicationRequest", "MedicationStatement", "Observation", "Patient",
    "Procedure", "ServiceRequest",
]
# Left out on purpose (see src/fhir/mod.rs): direct contact details, logical ids, and the
# Observation combo-* parameters (each is the union of two parameters that are indexed).
EXCLUDED = {
    "telecom": "contact details are direct identifiers, not search keywords",
    "phone": "contact details are direct identifiers, not search keywords",
    "email": "contact details are direct identifiers, not search keywords",
    "_id": "logical ids are per-resource and server-assigned",
}
EXCLUDED_PREFIX = {"combo-": "union of the plain and component-* parameters, both indexed"}
KINDS = {"CodeableConcept", "Coding", "Identifier", "code", "boolean", "string", "uri", "id",
         "canonical"}

sds = {}
for f in glob.glob(f"{src}/StructureDefinition-*.json"):
    sd = json.load(open(f))
    if sd.get("derivation") != "specialization" or "snapshot" not in sd:
        continue
    sds[sd["type"]] = {e["path"]: e for e in sd["snapshot"]["element"]}


def type_code(t):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        return "string"
    return code


def resolve(type_name, segments, cast):
    """Returns [(json_key, repeats)] and the leaf type, or raises ValueError."""
    out = []
    elements = sds[type_name]
    base = type_name
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        path = f"{base}.{seg}"
        elem = elements.get(path)
        key = seg
        if elem is None and f"{path}[x]" in elements:
            elem = elements[f"{path}[x]"]
            if not (last and cast):
                raise ValueError(f"choice element {path}[x] without a type")
            types = [type_code(t) for t in elem["type"]]
            if cast not in types:
                raise ValueError(f"{path}[x] has no type {cast}")
            key = seg + cast[0].upper() + cast[1:]
        if elem is None:
            raise ValueError(f"unknown element {path}")
        if "contentReference" in elem:
            ref = elem["contentReference"].lstrip("#")
            elem = dict(elements[ref], max=elem["max"])
            path = ref
        repeats = elem["max"] != "1" and elem["max"] != "0"
        out.append((key, repeats))
        types = [type_code(t) for t in elem.get("type", [])]
        if last:
            leaf = cast if cast else (types[0] if len(types) == 1 else None)
            if leaf is None:
                raise ValueError(f"{path} has several types")
            if cast and cast not in types:
                raise ValueError(f"{path} has no type {cast}")
            return out, leaf
        if types in (["BackboneElement"], ["Element"]) or not types:
            base = path
        elif len(types) == 1 and types[0] in sds:
            elements = sds[types[0]]
            base = types[0]
        else:
            raise ValueError(f"cannot step into {path} of type {types}")
    raise ValueError("empty path")


def split_union(expr):
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


PATH = r"[A-Za-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)*"


def parse_branch(branch):
    m = re.fullmatch(rf"\(\s*({PATH})\s+as\s+([A-Za-z]+)\s*\)", branch)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(rf"({PATH})\.ofType\(([A-Za-z]+)\)", branch)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(PATH, branch)
    if m:
        return branch, None
    raise ValueError(f"unsupported FHIRPath: {branch}")


rows, skipped = set(), []
for f in sorted(glob.glob(f"{src}/SearchParameter-*.json")):
    sp = json.load(open(f))
    if sp.get("type") != "token":
        continue
    code, expr = sp["code"], sp.get("expression")
    bases = set(sp.get("base", []))
    wanted = sorted(bases & set(RESOURCES))
    common = "Resource" in bases
    if not wanted and not common:
        continue
    reason = EXCLUDED.get(code) or next(
        (why for p, why in EXCLUDED_PREFIX.items() if code.startswith(p)), None)
    if reason:
        skipped.append((code, ",".join(wanted) or "*", reason))
        continue
    if not expr:
        skipped.append((code, ",".join(wanted) or "*", "no FHIRPath expression"))
        continue
    try:
        new = set()
        for branch in split_union(expr):
            path, cast = parse_branch(branch)
            head, *segments = path.split(".")
            if common and head == "Resource":
                target = "*"
                typed = "Observation"  # any DomainResource has the same meta
            elif head in wanted:
                target = typed = head
            else:
                continue
            keys, leaf = resolve(typed, segments, cast)
            if leaf not in KINDS:
                raise ValueError(f"{path}: token on type {leaf} is not supported")
            jpath = ".".join(k + ("*" if rep else "") for k, rep in keys)
            new.add((target, code, leaf, jpath))
        rows |= new
    except ValueError as e:
        skipped.append((code, ",".join(wanted) or "*", str(e)))

with open(dst, "w") as out:
    out.write("# Generated by scripts/gen-fhir-fixtures.sh from the official FHIR R4 (4.0.1)\n")
    out.write("# SearchParameter-*.json (type token) and StructureDefinition-*.json. Do not edit.\n")
    out.write("# Columns: resource type (* = every resource), parameter code, value type,\n")
    out.write("# JSON key path (a key ending in * holds a JSON array).\n")
    for code, res, why in sorted(set(skipped)):
        out.write(f"# not indexed: {res} {code}: {why}\n")
    for row in sorted(rows):
        out.write("\t".join(row) + "\n")
print(f"{len(rows)} rows, {len(set(skipped))} parameters left out")
PY

echo "== expected keywords (an independent reference implementation, for a differential test)"
python3 - "$ROOT/src/fhir/token_params.tsv" "$OUT" <<'PY'
"""Writes OUT/expected/<fixture>.keywords: the sorted `field:value` keywords of each fixture.

Written from the keyword forms documented in src/fhir/mod.rs, separately from the Rust code,
so tests/fhir_fixtures.rs can compare the two. Only for well-formed input (the fixtures).
"""
import glob
import json
import os
import sys

table, out = sys.argv[1], sys.argv[2]
params = {}
for line in open(table):
    if line.startswith("#") or not line.strip():
        continue
    res, code, kind, path = line.rstrip("\n").split("\t")
    field = code if res == "*" else f"{res}.{code}"
    params.setdefault(res, []).append((field, kind, path.split(".")))


def norm(text):
    t = " ".join(text.lower().split())
    return t[:256].rstrip(" ") or None


def values(node, steps):
    if not steps:
        yield node
        return
    key = steps[0].rstrip("*")
    v = node.get(key)
    if v is None:
        return
    for item in (v if steps[0].endswith("*") else [v]):
        if item is not None:
            yield from values(item, steps[1:])


def resource(r, kws):
    rt = r["resourceType"]
    kws.add(("_type", rt))
    for field, kind, steps in params.get(rt, []) + params.get("*", []):
        for v in values(r, steps):
            texts = []
            if kind in ("CodeableConcept", "Coding"):
                codings = v.get("coding", []) if kind == "CodeableConcept" else [v]
                for c in codings:
                    if "code" in c:
                        kws.add((field, c.get("system", "") + "|" + c["code"]))
                    texts.append(c.get("display"))
                if kind == "CodeableConcept":
                    texts.append(v.get("text"))
            elif kind == "Identifier":
                if "value" in v:
                    kws.add((field, v.get("system", "") + "|" + v["value"]))
            elif kind == "boolean":
                kws.add((field, "true" if v else "false"))
            else:
                kws.add((field, v))
            for t in texts:
                if t is not None and norm(t):
                    kws.add((field + ":text", norm(t)))
    if rt == "Bundle":
        for e in r.get("entry", []):
            resource(e["resource"], kws)


os.makedirs(f"{out}/expected", exist_ok=True)
for f in sorted(glob.glob(f"{out}/carebundle/*") + glob.glob(f"{out}/r4-examples/*")):
    kws = set()
    with open(f, encoding="utf-8") as fh:
        if f.endswith(".ndjson"):
            for line in fh:
                if line.strip():
                    resource(json.loads(line), kws)
        else:
            resource(json.load(fh), kws)
    name = os.path.basename(f).rsplit(".", 1)[0]
    with open(f"{out}/expected/{name}.keywords", "w", encoding="utf-8") as o:
        for field, value in sorted(kws):
            o.write(f"{field}:{value}\n")
PY

echo "== sizes"
du -sh "$OUT" "$ROOT/src/fhir/token_params.tsv"
