//! Synthetic FHIR R4 records for demonstrations and tests: obviously fictitious (ids
//! `synthetic-…`, the `HTEST` security label, a narrative saying no real person is described),
//! deterministic for a seed, with real terminology codes so searches have something to find.

use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// LOINC codes used by the generated observations: (code, display, unit, low, high).
pub const OBSERVATIONS: &[(&str, &str, &str, f64, f64)] = &[
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4.5,
        11.0,
    ),
    (
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        "mg/dL",
        70.0,
        250.0,
    ),
    ("8867-4", "Heart rate", "/min", 50.0, 120.0),
    ("29463-7", "Body weight", "kg", 45.0, 130.0),
];

/// SNOMED CT codes used by the generated conditions: (code, display).
pub const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
];

/// The LOINC system URI.
pub const LOINC: &str = "http://loinc.org";
/// The SNOMED CT system URI.
pub const SNOMED: &str = "http://snomed.info/sct";

fn meta() -> Value {
    json!({"security": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "code": "HTEST",
        "display": "test health data"
    }]})
}

fn narrative() -> Value {
    json!({"status": "generated",
           "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Synthetic test data; describes no real person.</div>"})
}

/// `count` synthetic resources (alternating observations and conditions), each one record,
/// serialised as compact JSON. The same seed gives the same bytes.
pub fn records(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let patient = format!("Patient/synthetic-{:04}", rng.gen_range(0..1000));
            let id = format!("synthetic-{seed}-{i:05}");
            let v = if i % 2 == 0 {
                let (code, display, unit, lo, hi) = OBSERVATIONS[(i / 2) % OBSERVATIONS.len()];
                let value = (rng.gen_range(lo..hi) * 10.0f64).round() / 10.0;
                json!({
                    "resourceType": "Observation", "id": id, "meta": meta(), "text": narrative(),
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}],
                             "text": display},
                    "subject": {"reference": patient},
                    "effectiveDateTime": format!("2024-{:02}-{:02}", rng.gen_range(1..13), rng.gen_range(1..29)),
                    "valueQuantity": {"value": value, "unit": unit,
                                      "system": "http://unitsofmeasure.org", "code": unit}
                })
            } else {
                let (code, display) = CONDITIONS[(i / 2) % CONDITIONS.len()];
                json!({
                    "resourceType": "Condition", "id": id, "meta": meta(), "text": narrative(),
                    "clinicalStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active"}]},
                    "code": {"coding": [{"system": SNOMED, "code": code, "display": display}],
                             "text": display},
                    "subject": {"reference": patient}
                })
            };
            serde_json::to_vec(&v).expect("invariant: JSON values serialise")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{ExtractConfig, InputFormat, extract};

    #[test]
    fn records_are_deterministic_valid_fhir_with_searchable_codes() {
        let a = records(1, 8);
        assert_eq!(a, records(1, 8));
        assert_ne!(a, records(2, 8));
        let code = format!("{LOINC}|{}", OBSERVATIONS[0].0);
        let mut with_code = 0;
        for r in &a {
            let e = extract(r, InputFormat::Json, &ExtractConfig::default()).unwrap();
            assert_eq!(e.resources, 1);
            if e.keywords.iter().any(|k| k.value == code) {
                with_code += 1;
            }
            let text = String::from_utf8(r.clone()).unwrap();
            assert!(text.contains("HTEST") && text.contains("synthetic-"));
        }
        assert_eq!(
            with_code, 1,
            "one observation of 8 records carries the first LOINC code"
        );
    }
}
