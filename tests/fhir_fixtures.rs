//! FHIR keyword extraction on the committed synthetic fixtures (`tests/fixtures/fhir/`, made by
//! `scripts/gen-fhir-fixtures.sh`): carebundle's US Core Bundle and Bulk Data NDJSON, and a few
//! official HL7 R4 examples.
//!
//! - Differential: each fixture's keywords equal `expected/<name>.keywords`, written by the
//!   script's separate Python reference implementation.
//! - Exact keyword sets of single resources, written by hand from the fixture JSON.
//! - Hostile variants of the fixtures (truncations, wrong types) are refused without panicking.
//! - Throughput figures are printed (run with `--release --nocapture`); nothing is timed
//!   against a threshold.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ehr::fhir::{
    ExtractConfig, FhirError, InputFormat, Keyword, OnMalformed, extract, extract_value,
};
use serde_json::Value;

fn dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/fhir")
}

const BUNDLE: &str = "carebundle/type2_diabetes-42-0000.json";
const NDJSON: &str = "carebundle/export.ndjson";

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Every fixture, with its input format.
fn fixtures() -> Vec<(String, InputFormat)> {
    let mut out = Vec::new();
    for sub in ["carebundle", "r4-examples"] {
        let mut names: Vec<_> = std::fs::read_dir(dir().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let format = if n.ends_with(".ndjson") {
                InputFormat::Ndjson
            } else {
                InputFormat::Json
            };
            out.push((format!("{sub}/{n}"), format));
        }
    }
    out
}

fn strings(kws: &BTreeSet<Keyword>) -> Vec<String> {
    kws.iter().map(Keyword::index_string).collect()
}

#[test]
fn every_fixture_matches_the_reference_implementation() {
    let all = fixtures();
    assert_eq!(all.len(), 12, "fixtures: {all:?}");
    for (rel, format) in all {
        let got = extract(&read(&rel), format, &ExtractConfig::default())
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        let stem = Path::new(&rel).file_stem().unwrap().to_str().unwrap();
        let expected = String::from_utf8(read(&format!("expected/{stem}.keywords"))).unwrap();
        let want: Vec<&str> = expected.lines().collect();
        assert!(!want.is_empty());
        assert_eq!(strings(&got.keywords), want, "{rel}");
        assert_eq!(got.skipped, 0);
    }
}

#[test]
fn carebundle_counts() {
    let cfg = ExtractConfig::default();
    let bundle = extract(&read(BUNDLE), InputFormat::Json, &cfg).unwrap();
    // 50 entries (1 Patient, 1 Practitioner, 1 Encounter, 4 Condition, 4 MedicationRequest,
    // 34 Observation, 5 DiagnosticReport) plus the Bundle itself.
    assert_eq!(bundle.resources, 51);
    assert_eq!(bundle.keywords.len(), 132);
    let conditions: Vec<_> = bundle
        .keywords
        .iter()
        .filter(|k| k.field == "Condition.code")
        .map(|k| k.value.as_str())
        .collect();
    assert_eq!(
        conditions,
        [
            "http://hl7.org/fhir/sid/icd-10-cm|E11.9",
            "http://hl7.org/fhir/sid/icd-10-cm|E66.9",
            "http://hl7.org/fhir/sid/icd-10-cm|E78.5",
            "http://hl7.org/fhir/sid/icd-10-cm|I10",
        ]
    );
    let nd = extract(&read(NDJSON), InputFormat::Ndjson, &cfg).unwrap();
    assert_eq!(nd.resources, 61);
    assert_eq!(nd.keywords.len(), 82);
    let types: Vec<_> = nd
        .keywords
        .iter()
        .filter(|k| k.field == "_type")
        .map(|k| k.value.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "Condition",
            "DiagnosticReport",
            "Encounter",
            "MedicationRequest",
            "Observation",
            "Patient",
            "Practitioner"
        ]
    );
}

fn entry(bundle: &Value, resource_type: &str, nth: usize) -> Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == resource_type)
        .nth(nth)
        .unwrap()
        .clone()
}

#[test]
fn exact_keywords_of_carebundle_resources() {
    let bundle: Value = serde_json::from_slice(&read(BUNDLE)).unwrap();
    let cfg = ExtractConfig::default();
    let htest = [
        "_security:http://terminology.hl7.org/CodeSystem/v3-ActReason|HTEST",
        "_security:text:test health data",
    ];

    let condition = extract_value(&entry(&bundle, "Condition", 0), &cfg).unwrap();
    let mut want = vec![
        "Condition.category:http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item",
        "Condition.category:text:problem list item",
        "Condition.clinical-status:http://terminology.hl7.org/CodeSystem/condition-clinical|active",
        "Condition.clinical-status:text:active",
        "Condition.code:http://hl7.org/fhir/sid/icd-10-cm|E11.9",
        "Condition.code:text:type 2 diabetes mellitus without complications",
        "Condition.verification-status:http://terminology.hl7.org/CodeSystem/condition-ver-status|confirmed",
        "Condition.verification-status:text:confirmed",
    ];
    want.extend(htest);
    want.push("_type:Condition");
    assert_eq!(strings(&condition.keywords), want);

    let med = extract_value(&entry(&bundle, "MedicationRequest", 0), &cfg).unwrap();
    let mut want = vec![
        "MedicationRequest.code:http://www.nlm.nih.gov/research/umls/rxnorm|861007",
        "MedicationRequest.code:text:metformin hydrochloride 500 mg oral tablet",
        "MedicationRequest.intent:order",
        "MedicationRequest.status:active",
    ];
    want.extend(htest);
    want.push("_type:MedicationRequest");
    assert_eq!(strings(&med.keywords), want);
}

#[test]
fn exact_keywords_of_an_official_example_with_components() {
    let got = extract(
        &read("r4-examples/Observation-blood-pressure.json"),
        InputFormat::Json,
        &ExtractConfig::default(),
    )
    .unwrap();
    assert_eq!(
        strings(&got.keywords),
        [
            "Observation.category:http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            "Observation.category:text:vital signs",
            "Observation.code:http://loinc.org|85354-9",
            "Observation.code:text:blood pressure panel with all children optional",
            "Observation.code:text:blood pressure systolic & diastolic",
            "Observation.component-code:http://acme.org/devices/clinical-codes|bp-s",
            "Observation.component-code:http://loinc.org|8462-4",
            "Observation.component-code:http://loinc.org|8480-6",
            "Observation.component-code:http://snomed.info/sct|271649006",
            "Observation.component-code:text:diastolic blood pressure",
            "Observation.component-code:text:systolic blood pressure",
            "Observation.identifier:urn:ietf:rfc:3986|urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281",
            "Observation.status:final",
            "_type:Observation",
        ]
    );
}

#[test]
fn ndjson_line_order_does_not_matter() {
    let text = String::from_utf8(read(NDJSON)).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let cfg = ExtractConfig::default();
    let a = extract(text.as_bytes(), InputFormat::Ndjson, &cfg).unwrap();
    let b = extract(lines.join("\n").as_bytes(), InputFormat::Ndjson, &cfg).unwrap();
    assert_eq!(a, b);
}

#[test]
fn truncated_fixtures_are_refused_without_panicking() {
    let cfg = ExtractConfig::default();
    let bundle = read(BUNDLE);
    let mut refused = 0;
    for cut in (0..bundle.len()).step_by(997) {
        match extract(&bundle[..cut], InputFormat::Json, &cfg) {
            Err(FhirError::Json { .. } | FhirError::Empty) => refused += 1,
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert!(refused > 50);
    // A truncated last NDJSON line is refused with its line number.
    let nd = read(NDJSON);
    let cut = &nd[..nd.len() - 40];
    match extract(cut, InputFormat::Ndjson, &cfg).unwrap_err() {
        FhirError::Json { line, .. } => assert_eq!(line, 61),
        e => panic!("{e}"),
    }
}

#[test]
fn a_wrong_type_inside_the_bundle_is_refused_or_skipped() {
    let mut bundle: Value = serde_json::from_slice(&read(BUNDLE)).unwrap();
    let idx = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Condition")
        .unwrap();
    bundle["entry"][idx]["resource"]["code"] = Value::from("E11.9");
    let bytes = serde_json::to_vec(&bundle).unwrap();
    let e = extract(&bytes, InputFormat::Json, &ExtractConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "$.entry[{idx}].resource.code: expected a CodeableConcept (JSON object), found a string"
        )
    );
    assert!(!e.to_string().contains("E11.9"));
    let skip = ExtractConfig {
        on_malformed: OnMalformed::Skip,
        ..ExtractConfig::default()
    };
    let got = extract(&bytes, InputFormat::Json, &skip).unwrap();
    assert_eq!(got.skipped, 1);
    assert!(!got.keywords.contains(&Keyword::new(
        "Condition.code",
        "http://hl7.org/fhir/sid/icd-10-cm|E11.9"
    )));
    assert_eq!(got.keywords.len(), 130, "lost the E11.9 token and its text");
}

/// Prints extraction throughput on the fixtures. Meaningful in release builds:
/// `cargo test --release -p ehr --test fhir_fixtures throughput -- --nocapture`.
#[test]
fn throughput() {
    let cfg = ExtractConfig::default();
    let inputs: Vec<(Vec<u8>, InputFormat)> = fixtures()
        .into_iter()
        .map(|(rel, f)| (read(&rel), f))
        .collect();
    let bytes_per_round: usize = inputs.iter().map(|(b, _)| b.len()).sum();
    let first: Vec<_> = inputs
        .iter()
        .map(|(b, f)| extract(b, *f, &cfg).unwrap())
        .collect();
    let resources_per_round: usize = first.iter().map(|e| e.resources).sum();
    let rounds = if cfg!(debug_assertions) { 3 } else { 200 };
    let start = Instant::now();
    for _ in 0..rounds {
        for ((b, f), want) in inputs.iter().zip(&first) {
            let got = extract(std::hint::black_box(b), *f, &cfg).unwrap();
            assert_eq!(&got, want, "extraction is deterministic");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (bytes_per_round * rounds) as f64 / 1e6;
    let resources = (resources_per_round * rounds) as f64;
    println!(
        "fhir extraction ({} build): {rounds} rounds of {bytes_per_round} bytes / \
         {resources_per_round} resources in {secs:.3} s: {:.1} MB/s, {:.0} resources/s",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        mb / secs,
        resources / secs
    );
}

/// Every JSON pointer in `v`, in document order.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{here}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

mod mutations {
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    static BUNDLE_VALUE: LazyLock<(Value, Vec<String>)> = LazyLock::new(|| {
        let v: Value = serde_json::from_slice(&read(BUNDLE)).unwrap();
        let mut ps = Vec::new();
        pointers(&v, String::new(), &mut ps);
        (v, ps)
    });

    fn replacement() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(Value::from(true)),
            Just(Value::from(42)),
            Just(Value::from("")),
            Just(Value::from("a|b")),
            Just(Value::from(" padded ")),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            Just(serde_json::json!([{"code": 1}])),
            Just(serde_json::json!({"coding": "x"})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Replacing any node of a real Bundle never panics; what strict mode refuses for an
        /// element, skip mode accepts (counting it); otherwise both modes agree.
        #[test]
        fn mutated_bundle_nodes(pick in any::<prop::sample::Index>(), new in replacement()) {
            let (orig, ps) = &*BUNDLE_VALUE;
            let ptr = pick.get(ps);
            let mut v = orig.clone();
            *v.pointer_mut(ptr).unwrap() = new;
            let strict = extract_value(&v, &ExtractConfig::default());
            let skip_cfg = ExtractConfig { on_malformed: OnMalformed::Skip, ..ExtractConfig::default() };
            let skip = extract_value(&v, &skip_cfg);
            match &strict {
                Ok(s) => prop_assert_eq!(Some(s), skip.as_ref().ok()),
                Err(e) if e.is_element_error() => {
                    let s = skip.unwrap();
                    prop_assert!(s.skipped >= 1);
                }
                Err(_) => prop_assert_eq!(skip.unwrap_err(), strict.clone().unwrap_err()),
            }
        }

        /// Random byte flips in the serialized Bundle never panic.
        #[test]
        fn flipped_bytes(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = read(BUNDLE);
            for (i, b) in flips {
                let n = i.index(bytes.len());
                bytes[n] = b;
            }
            let _ = extract(&bytes, InputFormat::Json, &ExtractConfig::default());
        }
    }
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
