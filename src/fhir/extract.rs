//! Walking resources, Bundles and NDJSON along the token search parameters.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::params::{TokenParam, ValueKind, params_for};
use super::validate::{
    ExtractConfig, OnMalformed, Part, check_resource_type, check_token_part, json_type,
    normalize_text,
};
use super::{FhirError, Keyword};

/// How the input is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON document: a resource, or a Bundle whose `entry[].resource` are walked
    /// (`application/fhir+json`).
    Json,
    /// Newline-delimited JSON, one resource per line, blank lines ignored
    /// (`application/fhir+ndjson`, the Bulk Data export format).
    Ndjson,
}

impl InputFormat {
    /// The format for an HTTP `Content-Type` (parameters such as `; charset=utf-8` and case are
    /// ignored): `application/fhir+json` or `application/json` is [`Json`](Self::Json);
    /// `application/fhir+ndjson`, `application/ndjson` or `application/x-ndjson` is
    /// [`Ndjson`](Self::Ndjson); anything else `None`.
    pub fn from_media_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let is = |t: &str| essence.eq_ignore_ascii_case(t);
        if is("application/fhir+json") || is("application/json") {
            Some(Self::Json)
        } else if is("application/fhir+ndjson")
            || is("application/ndjson")
            || is("application/x-ndjson")
        {
            Some(Self::Ndjson)
        } else {
            None
        }
    }
}

/// The keywords of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extraction {
    /// The keywords, de-duplicated and sorted by field, then value.
    pub keywords: BTreeSet<Keyword>,
    /// How many resources were walked (Bundles and their entries each count).
    pub resources: usize,
    /// How many malformed elements were skipped (always 0 with [`OnMalformed::Refuse`]).
    pub skipped: usize,
}

/// Extracts the keywords of `input` (see the [module docs](super) for the keyword forms).
///
/// Validates `config` first. Any error refuses the whole input; nothing is returned for it.
pub fn extract(
    input: &[u8],
    format: InputFormat,
    config: &ExtractConfig,
) -> Result<Extraction, FhirError> {
    config.validate()?;
    if input.len() > config.max_input_bytes {
        return Err(FhirError::InputTooLarge {
            len: input.len(),
            max: config.max_input_bytes,
        });
    }
    let mut w = Walker::new(config);
    match format {
        InputFormat::Json => {
            if input.iter().all(u8::is_ascii_whitespace) {
                return Err(FhirError::Empty);
            }
            check_document(input, 0, config)?;
            let value = parse(input, 0)?;
            w.resource(&value, &mut "$".to_owned(), 0)?;
        }
        InputFormat::Ndjson => {
            for (i, line) in input.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                check_document(line, i, config)?;
                let value = parse(line, i)?;
                w.resource(&value, &mut format!("line {}: $", i + 1), 0)?;
            }
            if w.out.resources == 0 {
                return Err(FhirError::Empty);
            }
        }
    }
    Ok(w.out)
}

/// Extracts the keywords of one already parsed resource or Bundle.
///
/// The byte-size limits of `config` do not apply (the value is already in memory); the others
/// do.
pub fn extract_value(value: &Value, config: &ExtractConfig) -> Result<Extraction, FhirError> {
    config.validate()?;
    let mut w = Walker::new(config);
    w.resource(value, &mut "$".to_owned(), 0)?;
    Ok(w.out)
}

fn check_document(doc: &[u8], line0: usize, config: &ExtractConfig) -> Result<(), FhirError> {
    if doc.len() > config.max_document_bytes {
        return Err(FhirError::DocumentTooLarge {
            line: line0 + 1,
            len: doc.len(),
            max: config.max_document_bytes,
        });
    }
    Ok(())
}

/// Parses one JSON document; `line0` is the 0-based line it starts on (for NDJSON).
fn parse(bytes: &[u8], line0: usize) -> Result<Value, FhirError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's messages for `Value` never quote the input; drop its location suffix.
        let msg = e.to_string();
        let reason = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        FhirError::Json {
            line: line0 + e.line().max(1),
            column: e.column(),
            reason,
        }
    })
}

struct Walker<'c> {
    config: &'c ExtractConfig,
    out: Extraction,
}

impl<'c> Walker<'c> {
    fn new(config: &'c ExtractConfig) -> Self {
        Self {
            config,
            out: Extraction::default(),
        }
    }

    fn add(&mut self, field: &str, value: String) -> Result<(), FhirError> {
        let kw = Keyword {
            field: field.to_owned(),
            value,
        };
        if self.out.keywords.len() >= self.config.max_keywords && !self.out.keywords.contains(&kw) {
            return Err(FhirError::TooManyKeywords {
                max: self.config.max_keywords,
            });
        }
        self.out.keywords.insert(kw);
        Ok(())
    }

    /// Walks one resource at `at` (a JSON path; extended and restored in place).
    fn resource(&mut self, v: &Value, at: &mut String, nesting: usize) -> Result<(), FhirError> {
        let Value::Object(obj) = v else {
            return Err(FhirError::NotAResource {
                at: at.clone(),
                found: json_type(v),
            });
        };
        if self.out.resources >= self.config.max_resources {
            return Err(FhirError::TooManyResources {
                max: self.config.max_resources,
            });
        }
        self.out.resources += 1;
        let rt = obj
            .get("resourceType")
            .ok_or_else(|| FhirError::MissingResourceType { at: at.clone() })?;
        let rt = check_resource_type(rt, at)?;
        self.add("_type", rt.to_owned())?;
        for param in params_for(rt) {
            let len = at.len();
            let r = self.path(obj, param, 0, at);
            at.truncate(len);
            match r {
                Err(e) if e.is_element_error() && self.config.on_malformed == OnMalformed::Skip => {
                    self.out.skipped += 1;
                    tracing::warn!(field = %param.field, error = %e, "skipped a malformed FHIR element");
                }
                r => r?,
            }
        }
        if rt == "Bundle" {
            self.bundle(obj, at, nesting)?;
        }
        Ok(())
    }

    fn bundle(
        &mut self,
        obj: &Map<String, Value>,
        at: &mut String,
        nesting: usize,
    ) -> Result<(), FhirError> {
        let Some(entries) = obj.get("entry") else {
            return Ok(());
        };
        let Value::Array(entries) = entries else {
            return Err(FhirError::BundleEntry {
                at: format!("{at}.entry"),
                reason: "Bundle.entry must be an array",
            });
        };
        if nesting >= self.config.max_bundle_nesting && !entries.is_empty() {
            return Err(FhirError::BundleTooDeep {
                at: at.clone(),
                max: self.config.max_bundle_nesting,
            });
        }
        let len = at.len();
        for (i, entry) in entries.iter().enumerate() {
            at.truncate(len);
            at.push_str(&format!(".entry[{i}]"));
            let Value::Object(entry) = entry else {
                return Err(FhirError::BundleEntry {
                    at: at.clone(),
                    reason: "a Bundle entry must be an object",
                });
            };
            let Some(resource) = entry.get("resource") else {
                return Err(FhirError::BundleEntry {
                    at: at.clone(),
                    reason: "a Bundle entry has no resource (entries without one, such as \
                             DELETE requests, are not accepted for upload)",
                });
            };
            at.push_str(".resource");
            self.resource(resource, at, nesting + 1)?;
        }
        at.truncate(len);
        Ok(())
    }

    /// Follows `param.path` from step `i` inside `obj`.
    fn path(
        &mut self,
        obj: &Map<String, Value>,
        param: &TokenParam,
        i: usize,
        at: &mut String,
    ) -> Result<(), FhirError> {
        let step = &param.path[i];
        let Some(v) = obj.get(&step.key) else {
            return Ok(());
        };
        at.push('.');
        at.push_str(&step.key);
        let last = i + 1 == param.path.len();
        if step.repeats {
            let Value::Array(items) = v else {
                return Err(wrong(at, "an array", v));
            };
            let len = at.len();
            for (n, item) in items.iter().enumerate() {
                at.truncate(len);
                at.push_str(&format!("[{n}]"));
                self.step(item, param, i, last, true, at)?;
            }
            at.truncate(len);
            Ok(())
        } else {
            self.step(v, param, i, last, false, at)
        }
    }

    fn step(
        &mut self,
        v: &Value,
        param: &TokenParam,
        i: usize,
        last: bool,
        in_array: bool,
        at: &mut String,
    ) -> Result<(), FhirError> {
        if last {
            return self.leaf(v, param, in_array, at);
        }
        let Value::Object(child) = v else {
            return Err(wrong(at, "an object", v));
        };
        self.path(child, param, i + 1, at)
    }

    fn leaf(
        &mut self,
        v: &Value,
        param: &TokenParam,
        in_array: bool,
        at: &mut String,
    ) -> Result<(), FhirError> {
        match param.kind {
            ValueKind::CodeableConcept => {
                let Value::Object(cc) = v else {
                    return Err(wrong(at, param.kind.name(), v));
                };
                if let Some(codings) = cc.get("coding") {
                    let Value::Array(codings) = codings else {
                        return Err(wrong(&format!("{at}.coding"), "an array", codings));
                    };
                    for (n, coding) in codings.iter().enumerate() {
                        let here = format!("{at}.coding[{n}]");
                        let Value::Object(coding) = coding else {
                            return Err(wrong(&here, ValueKind::Coding.name(), coding));
                        };
                        self.coding(coding, param, &here)?;
                    }
                }
                self.text(cc, "text", param, at)
            }
            ValueKind::Coding => {
                let Value::Object(coding) = v else {
                    return Err(wrong(at, param.kind.name(), v));
                };
                self.coding(coding, param, at)
            }
            ValueKind::Identifier => {
                let Value::Object(id) = v else {
                    return Err(wrong(at, param.kind.name(), v));
                };
                let system = string_field(id, "system", at)?;
                let value = string_field(id, "value", at)?;
                self.token(param, system, value, "value", at)
            }
            ValueKind::Code => match v {
                Value::String(s) => {
                    check_token_part(s, Part::Value, || at.clone())?;
                    self.add(&param.field, s.clone())
                }
                // A null in an array of primitives stands for a value that only has extensions.
                Value::Null if in_array => Ok(()),
                _ => Err(wrong(at, param.kind.name(), v)),
            },
            ValueKind::Boolean => match v {
                Value::Bool(b) => self.add(&param.field, b.to_string()),
                Value::Null if in_array => Ok(()),
                _ => Err(wrong(at, param.kind.name(), v)),
            },
        }
    }

    fn coding(
        &mut self,
        coding: &Map<String, Value>,
        param: &TokenParam,
        at: &str,
    ) -> Result<(), FhirError> {
        let system = string_field(coding, "system", at)?;
        let code = string_field(coding, "code", at)?;
        self.token(param, system, code, "code", at)?;
        self.text(coding, "display", param, at)
    }

    /// Adds `system|value` (or `|value`); nothing when there is no value.
    fn token(
        &mut self,
        param: &TokenParam,
        system: Option<&str>,
        value: Option<&str>,
        value_key: &str,
        at: &str,
    ) -> Result<(), FhirError> {
        if let Some(system) = system {
            check_token_part(system, Part::System, || format!("{at}.system"))?;
        }
        let Some(value) = value else {
            return Ok(());
        };
        check_token_part(value, Part::Value, || format!("{at}.{value_key}"))?;
        let token = format!("{}|{value}", system.unwrap_or(""));
        self.add(&param.field, token)
    }

    fn text(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        param: &TokenParam,
        at: &str,
    ) -> Result<(), FhirError> {
        let Some(text) = string_field(obj, key, at)? else {
            return Ok(());
        };
        // A FHIR string holds no character below U+0020 but tab, CR and LF.
        if text
            .chars()
            .any(|c| c < ' ' && !matches!(c, '\t' | '\r' | '\n'))
        {
            return Err(FhirError::InvalidValue {
                at: format!("{at}.{key}"),
                reason: "contains a control character",
            });
        }
        if let Some(norm) = normalize_text(text) {
            self.add(&param.text_field, norm)?;
        }
        Ok(())
    }
}

/// `obj[key]` as a string: `None` when absent, an error when present with another type.
fn string_field<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'v str>, FhirError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong(&format!("{at}.{key}"), "a string", v)),
    }
}

fn wrong(at: &str, expected: &'static str, found: &Value) -> FhirError {
    FhirError::WrongType {
        at: at.to_owned(),
        expected,
        found: json_type(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ICD: &str = "http://hl7.org/fhir/sid/icd-10-cm";
    const LOINC: &str = "http://loinc.org";
    const SNOMED: &str = "http://snomed.info/sct";

    fn kws(v: Value) -> Vec<String> {
        let ex = extract_value(&v, &ExtractConfig::default()).unwrap();
        ex.keywords.iter().map(Keyword::index_string).collect()
    }

    fn err(v: Value) -> FhirError {
        extract_value(&v, &ExtractConfig::default()).unwrap_err()
    }

    fn cc(system: &str, code: &str, display: &str) -> Value {
        json!({"coding": [{"system": system, "code": code, "display": display}]})
    }

    #[test]
    fn condition_code_category_and_statuses() {
        let got = kws(json!({
            "resourceType": "Condition",
            "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                "active", "Active"),
            "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category",
                "problem-list-item", "Problem List Item")],
            "code": {
                "coding": [
                    {"system": ICD, "code": "E11.9", "display": "Type 2 diabetes mellitus without complications"},
                    {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"}
                ],
                "text": "  Type 2   DIABETES "
            },
            "bodySite": [{"text": "Pancreas"}],
            "subject": {"reference": "Patient/p1"},
            "note": [{"text": "not indexed"}]
        }));
        assert_eq!(
            got,
            [
                "Condition.body-site:text:pancreas",
                "Condition.category:http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item",
                "Condition.category:text:problem list item",
                "Condition.clinical-status:http://terminology.hl7.org/CodeSystem/condition-clinical|active",
                "Condition.clinical-status:text:active",
                "Condition.code:http://hl7.org/fhir/sid/icd-10-cm|E11.9",
                "Condition.code:http://snomed.info/sct|44054006",
                "Condition.code:text:diabetes mellitus type 2",
                "Condition.code:text:type 2 diabetes",
                "Condition.code:text:type 2 diabetes mellitus without complications",
                "_type:Condition",
            ]
        );
    }

    #[test]
    fn observation_components_and_value_concept() {
        let got = kws(json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                 "valueCodeableConcept": {"coding": [{"code": "H"}]}}
            ],
            "valueCodeableConcept": cc(SNOMED, "112144000", "Blood group A"),
            "method": {"coding": [{"code": "auscultation"}]}
        }));
        assert_eq!(
            got,
            [
                "Observation.code:http://loinc.org|85354-9",
                "Observation.component-code:http://loinc.org|8462-4",
                "Observation.component-code:http://loinc.org|8480-6",
                "Observation.component-value-concept:|H",
                "Observation.method:|auscultation",
                "Observation.status:final",
                "Observation.value-concept:http://snomed.info/sct|112144000",
                "Observation.value-concept:text:blood group a",
                "_type:Observation",
            ]
        );
    }

    #[test]
    fn medication_request_concept_not_reference() {
        let got = kws(json!({
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm",
                "860975", "Metformin 500 MG Oral Tablet"),
            "identifier": [{"value": "rx-1"}]
        }));
        assert_eq!(
            got,
            [
                "MedicationRequest.code:http://www.nlm.nih.gov/research/umls/rxnorm|860975",
                "MedicationRequest.code:text:metformin 500 mg oral tablet",
                "MedicationRequest.identifier:|rx-1",
                "MedicationRequest.intent:order",
                "MedicationRequest.status:active",
                "_type:MedicationRequest",
            ]
        );
        let by_ref = kws(json!({
            "resourceType": "MedicationRequest",
            "medicationReference": {"reference": "#med1"}
        }));
        assert_eq!(by_ref, ["_type:MedicationRequest"]);
    }

    #[test]
    fn encounter_class_type_and_reason() {
        let got = kws(json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                      "display": "ambulatory"},
            "type": [{"text": "Ambulatory visit"}],
            "reasonCode": [cc(SNOMED, "38341003", "Hypertension")]
        }));
        assert_eq!(
            got,
            [
                "Encounter.class:http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB",
                "Encounter.class:text:ambulatory",
                "Encounter.reason-code:http://snomed.info/sct|38341003",
                "Encounter.reason-code:text:hypertension",
                "Encounter.status:finished",
                "Encounter.type:text:ambulatory visit",
                "_type:Encounter",
            ]
        );
    }

    #[test]
    fn procedure_immunization_allergy_and_report() {
        assert_eq!(
            kws(json!({"resourceType": "Procedure", "status": "completed",
                "code": cc(SNOMED, "80146002", "Appendectomy")})),
            [
                "Procedure.code:http://snomed.info/sct|80146002",
                "Procedure.code:text:appendectomy",
                "Procedure.status:completed",
                "_type:Procedure",
            ]
        );
        assert_eq!(
            kws(json!({"resourceType": "Immunization",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                "protocolApplied": [{"targetDisease": [{"coding": [{"system": SNOMED, "code": "6142004"}]}]}]})),
            [
                "Immunization.target-disease:http://snomed.info/sct|6142004",
                "Immunization.vaccine-code:http://hl7.org/fhir/sid/cvx|140",
                "_type:Immunization",
            ]
        );
        assert_eq!(
            kws(
                json!({"resourceType": "AllergyIntolerance", "category": ["medication"],
                "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "723"}]},
                "reaction": [{"substance": {"coding": [{"code": "penicillin"}]},
                              "manifestation": [{"text": "Hives"}], "severity": "mild"}]})
            ),
            [
                "AllergyIntolerance.category:medication",
                "AllergyIntolerance.code:http://www.nlm.nih.gov/research/umls/rxnorm|723",
                "AllergyIntolerance.code:|penicillin",
                "AllergyIntolerance.manifestation:text:hives",
                "AllergyIntolerance.severity:mild",
                "_type:AllergyIntolerance",
            ]
        );
        assert_eq!(
            kws(
                json!({"resourceType": "DiagnosticReport", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
                "code": {"coding": [{"system": LOINC, "code": "24323-8"}]},
                "conclusionCode": [{"coding": [{"system": SNOMED, "code": "428763004"}]}]})
            ),
            [
                "DiagnosticReport.category:http://terminology.hl7.org/CodeSystem/v2-0074|LAB",
                "DiagnosticReport.code:http://loinc.org|24323-8",
                "DiagnosticReport.conclusion:http://snomed.info/sct|428763004",
                "DiagnosticReport.status:final",
                "_type:DiagnosticReport",
            ]
        );
    }

    #[test]
    fn patient_gender_identifier_active_not_telecom() {
        let got = kws(json!({
            "resourceType": "Patient",
            "active": true,
            "gender": "female",
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
                           {"value": "no-system"}, {"system": "urn:x"}],
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "name": [{"family": "Chalmers"}],
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                    "code": "HTEST", "display": "test health data"}]}
        }));
        assert_eq!(
            got,
            [
                "Patient.active:true",
                "Patient.gender:female",
                "Patient.identifier:urn:oid:1.2.36.146.595.217.0.1|12345",
                "Patient.identifier:|no-system",
                "_security:http://terminology.hl7.org/CodeSystem/v3-ActReason|HTEST",
                "_security:text:test health data",
                "_type:Patient",
            ]
        );
    }

    #[test]
    fn unknown_types_only_yield_their_type_and_meta() {
        assert_eq!(
            kws(
                json!({"resourceType": "Practitioner", "name": [{"family": "X"}],
                "meta": {"tag": [{"code": "t1"}]}})
            ),
            ["_tag:|t1", "_type:Practitioner"]
        );
    }

    #[test]
    fn bundle_walks_entries_and_dedups() {
        let entry = |r: Value| json!({"fullUrl": "urn:uuid:1", "resource": r, "request": {"method": "POST"}});
        let c = json!({"resourceType": "Condition", "code": {"coding": [{"system": ICD, "code": "I10"}]}});
        let b = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [entry(c.clone()), entry(c), entry(json!({"resourceType": "Patient", "gender": "male"}))]});
        let ex = extract_value(&b, &ExtractConfig::default()).unwrap();
        assert_eq!(ex.resources, 4);
        let got: Vec<_> = ex.keywords.iter().map(Keyword::index_string).collect();
        assert_eq!(
            got,
            [
                "Condition.code:http://hl7.org/fhir/sid/icd-10-cm|I10",
                "Patient.gender:male",
                "_type:Bundle",
                "_type:Condition",
                "_type:Patient",
            ]
        );
        // An empty Bundle is a valid (if useless) resource.
        assert_eq!(
            kws(json!({"resourceType": "Bundle", "entry": []})),
            ["_type:Bundle"]
        );
    }

    #[test]
    fn ndjson_and_bundle_of_the_same_resources_agree() {
        let a = r#"{"resourceType":"Condition","code":{"coding":[{"system":"s","code":"c"}]}}"#;
        let b = r#"{"resourceType":"Observation","code":{"text":"Heart rate"}}"#;
        let nd = format!("{a}\r\n\n  \n{b}\n");
        let cfg = ExtractConfig::default();
        let from_nd = extract(nd.as_bytes(), InputFormat::Ndjson, &cfg).unwrap();
        assert_eq!(from_nd.resources, 2);
        let bundle = format!(
            r#"{{"resourceType":"Bundle","entry":[{{"resource":{a}}},{{"resource":{b}}}]}}"#
        );
        let mut from_bundle = extract(bundle.as_bytes(), InputFormat::Json, &cfg).unwrap();
        assert!(
            from_bundle
                .keywords
                .remove(&Keyword::new("_type", "Bundle"))
        );
        assert_eq!(from_nd.keywords, from_bundle.keywords);
    }

    #[test]
    fn json_errors_name_line_and_column() {
        let cfg = ExtractConfig::default();
        let nd = b"{\"resourceType\":\"Patient\"}\n{\"resourceType\": \n";
        match extract(nd, InputFormat::Ndjson, &cfg).unwrap_err() {
            FhirError::Json { line, .. } => assert_eq!(line, 2),
            e => panic!("{e}"),
        }
        let two = b"{\"resourceType\":\"Patient\"}\n{\"resourceType\":\"Patient\"}";
        let e = extract(two, InputFormat::Json, &cfg).unwrap_err();
        assert_eq!(
            e,
            FhirError::Json {
                line: 2,
                column: 1,
                reason: "trailing characters".into()
            }
        );
        assert_eq!(
            extract(b"  \n", InputFormat::Json, &cfg).unwrap_err(),
            FhirError::Empty
        );
        assert_eq!(
            extract(b"\n\n", InputFormat::Ndjson, &cfg).unwrap_err(),
            FhirError::Empty
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            extract(deep.as_bytes(), InputFormat::Json, &cfg).unwrap_err(),
            FhirError::Json { .. }
        ));
        let secret = b"{\"resourceType\":\"Patient\",\"gender\":\"SECRETVALUE\" x}";
        let e = extract(secret, InputFormat::Json, &cfg)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            err(json!([1])),
            FhirError::NotAResource {
                at: "$".into(),
                found: "an array"
            }
        );
        assert_eq!(
            err(json!({"gender": "x"})),
            FhirError::MissingResourceType { at: "$".into() }
        );
        assert!(matches!(
            err(json!({"resourceType": 3})),
            FhirError::InvalidResourceType { .. }
        ));
        assert_eq!(
            err(json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}},
                {"request": {"method": "DELETE", "url": "Patient/1"}}]}))
            .to_string(),
            "$.entry[1]: a Bundle entry has no resource (entries without one, such as DELETE \
             requests, are not accepted for upload)"
        );
        assert!(matches!(
            err(json!({"resourceType": "Bundle", "entry": {"resource": {}}})),
            FhirError::BundleEntry { .. }
        ));
        assert!(matches!(
            err(json!({"resourceType": "Bundle", "entry": [7]})),
            FhirError::BundleEntry { .. }
        ));
        assert_eq!(
            err(json!({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]})),
            FhirError::MissingResourceType {
                at: "$.entry[0].resource".into()
            }
        );
    }

    #[test]
    fn nested_bundles_are_limited() {
        let inner =
            json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]});
        let two = json!({"resourceType": "Bundle", "entry": [{"resource": inner}]});
        assert_eq!(
            extract_value(&two, &ExtractConfig::default())
                .unwrap()
                .resources,
            3
        );
        let three = json!({"resourceType": "Bundle", "entry": [{"resource": two}]});
        assert_eq!(
            err(three),
            FhirError::BundleTooDeep {
                at: "$.entry[0].resource.entry[0].resource".into(),
                max: 2
            }
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_path() {
        let cases = [
            (
                json!({"resourceType": "Condition", "code": "E11.9"}),
                "$.code: expected a CodeableConcept (JSON object), found a string",
            ),
            (
                json!({"resourceType": "Condition", "category": {"text": "x"}}),
                "$.category: expected an array, found an object",
            ),
            (
                json!({"resourceType": "Condition", "code": {"coding": {"code": "x"}}}),
                "$.code.coding: expected an array, found an object",
            ),
            (
                json!({"resourceType": "Condition", "code": {"coding": [{"code": "a"}, "b"]}}),
                "$.code.coding[1]: expected a Coding (JSON object), found a string",
            ),
            (
                json!({"resourceType": "Condition", "code": {"coding": [{"code": 5}]}}),
                "$.code.coding[0].code: expected a string, found a number",
            ),
            (
                json!({"resourceType": "Condition", "code": {"text": ["x"]}}),
                "$.code.text: expected a string, found an array",
            ),
            (
                json!({"resourceType": "Observation", "component": [{"code": null}]}),
                "$.component[0].code: expected a CodeableConcept (JSON object), found null",
            ),
            (
                json!({"resourceType": "Observation", "component": [3]}),
                "$.component[0]: expected an object, found a number",
            ),
            (
                json!({"resourceType": "Patient", "gender": {"code": "female"}}),
                "$.gender: expected a string, found an object",
            ),
            (
                json!({"resourceType": "Patient", "active": "yes"}),
                "$.active: expected a boolean, found a string",
            ),
            (
                json!({"resourceType": "Patient", "identifier": [{"value": 12345}]}),
                "$.identifier[0].value: expected a string, found a number",
            ),
            (
                json!({"resourceType": "Encounter", "class": [{"code": "AMB"}]}),
                "$.class: expected a Coding (JSON object), found an array",
            ),
            (
                json!({"resourceType": "Condition", "code": {"coding": [{"system": "a|b", "code": "c"}]}}),
                "$.code.coding[0].system: system contains '|', which would make the token ambiguous",
            ),
            (
                json!({"resourceType": "Condition", "code": {"coding": [{"system": "s", "code": ""}]}}),
                "$.code.coding[0].code: empty string (FHIR forbids empty values)",
            ),
            (
                json!({"resourceType": "Patient", "meta": {"security": [{"code": " x"}]}}),
                "$.meta.security[0].code: has leading or trailing whitespace",
            ),
        ];
        for (v, want) in cases {
            let e = err(v);
            assert!(e.is_element_error());
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn nulls_in_primitive_arrays_are_extension_placeholders() {
        assert_eq!(
            kws(
                json!({"resourceType": "AllergyIntolerance", "category": [null, "food"],
                "_category": [{"extension": []}, null]})
            ),
            [
                "AllergyIntolerance.category:food",
                "_type:AllergyIntolerance"
            ]
        );
    }

    #[test]
    fn skip_mode_skips_counts_and_keeps_the_rest() {
        let cfg = ExtractConfig {
            on_malformed: OnMalformed::Skip,
            ..ExtractConfig::default()
        };
        let v = json!({"resourceType": "Condition", "code": "E11.9", "gender": 1,
            "category": [{"coding": [{"system": "s", "code": "c"}]}],
            "clinicalStatus": {"coding": [{"code": 3}]}});
        let ex = extract_value(&v, &cfg).unwrap();
        assert_eq!(ex.skipped, 2);
        let got: Vec<_> = ex.keywords.iter().map(Keyword::index_string).collect();
        assert_eq!(got, ["Condition.category:s|c", "_type:Condition"]);
        // Structural errors still refuse.
        assert!(extract_value(&json!({"resourceType": "Bundle", "entry": [{}]}), &cfg).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let cfg = ExtractConfig {
            max_input_bytes: 10,
            ..ExtractConfig::default()
        };
        assert_eq!(
            extract(br#"{"resourceType":"Patient"}"#, InputFormat::Json, &cfg).unwrap_err(),
            FhirError::InputTooLarge { len: 26, max: 10 }
        );
        let cfg = ExtractConfig {
            max_resources: 2,
            ..ExtractConfig::default()
        };
        let nd = "{\"resourceType\":\"Patient\"}\n".repeat(3);
        assert_eq!(
            extract(nd.as_bytes(), InputFormat::Ndjson, &cfg).unwrap_err(),
            FhirError::TooManyResources { max: 2 }
        );
        let cfg = ExtractConfig {
            max_keywords: 3,
            ..ExtractConfig::default()
        };
        let ok = json!({"resourceType": "Patient", "gender": "male", "active": true});
        assert_eq!(extract_value(&ok, &cfg).unwrap().keywords.len(), 3);
        let over = json!({"resourceType": "Patient", "gender": "male", "active": true,
            "identifier": [{"value": "1"}]});
        assert_eq!(
            extract_value(&over, &cfg).unwrap_err(),
            FhirError::TooManyKeywords { max: 3 }
        );
        let cfg = ExtractConfig {
            max_keywords: 0,
            ..ExtractConfig::default()
        };
        assert!(matches!(
            extract_value(&ok, &cfg).unwrap_err(),
            FhirError::InvalidConfig { .. }
        ));
    }

    #[test]
    fn documents_over_the_limit_are_refused_before_parsing() {
        let cfg = ExtractConfig {
            max_document_bytes: 30,
            ..ExtractConfig::default()
        };
        let small = "{\"resourceType\":\"Patient\"}";
        let big = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}",
            "x".repeat(20)
        );
        assert!(extract(small.as_bytes(), InputFormat::Json, &cfg).is_ok());
        assert_eq!(
            extract(big.as_bytes(), InputFormat::Json, &cfg).unwrap_err(),
            FhirError::DocumentTooLarge {
                line: 1,
                len: 54,
                max: 30
            }
        );
        let nd = format!("{small}\n{small}\n{big}\n");
        assert_eq!(
            extract(nd.as_bytes(), InputFormat::Ndjson, &cfg).unwrap_err(),
            FhirError::DocumentTooLarge {
                line: 3,
                len: 54,
                max: 30
            }
        );
        // NDJSON lines are limited one by one, not as a whole.
        let many = format!("{small}\n").repeat(10);
        assert_eq!(
            extract(many.as_bytes(), InputFormat::Ndjson, &cfg)
                .unwrap()
                .resources,
            10
        );
    }

    #[test]
    fn media_types() {
        assert_eq!(
            InputFormat::from_media_type("application/fhir+json; charset=utf-8"),
            Some(InputFormat::Json)
        );
        assert_eq!(
            InputFormat::from_media_type("Application/JSON"),
            Some(InputFormat::Json)
        );
        assert_eq!(
            InputFormat::from_media_type("application/fhir+ndjson"),
            Some(InputFormat::Ndjson)
        );
        assert_eq!(
            InputFormat::from_media_type("application/x-ndjson"),
            Some(InputFormat::Ndjson)
        );
        assert_eq!(InputFormat::from_media_type("text/plain"), None);
        assert_eq!(InputFormat::from_media_type(""), None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("".to_owned()),
                Just("http://loinc.org".to_owned()),
                Just("a|b".to_owned()),
                "\\PC{0,12}",
            ]
            .prop_map(Value::String),
        ];
        let keys = prop_oneof![
            Just("resourceType"),
            Just("entry"),
            Just("resource"),
            Just("code"),
            Just("coding"),
            Just("system"),
            Just("display"),
            Just("text"),
            Just("component"),
            Just("category"),
            Just("valueCodeableConcept"),
            Just("identifier"),
            Just("value"),
            Just("gender"),
            Just("active"),
            Just("meta"),
            Just("security"),
            Just("reaction"),
            Just("substance"),
            Just("x"),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((keys.clone(), inner.clone()), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
                (
                    prop_oneof![
                        Just("Bundle"),
                        Just("Condition"),
                        Just("Observation"),
                        Just("Patient"),
                        Just("AllergyIntolerance"),
                        Just("bad type")
                    ],
                    prop::collection::vec((keys.clone(), inner), 0..6)
                )
                    .prop_map(|(rt, kv)| {
                        let mut m: Map<String, Value> =
                            kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                        m.insert("resourceType".into(), Value::from(rt));
                        Value::Object(m)
                    }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let cfg = ExtractConfig::default();
            let strict = extract_value(&v, &cfg);
            let skip = extract_value(&v, &ExtractConfig { on_malformed: OnMalformed::Skip, ..cfg.clone() });
            // Skipping never refuses what strict mode accepts, and agrees with it then.
            if let Ok(s) = &strict {
                prop_assert_eq!(Some(s), skip.as_ref().ok());
            }
            // The same value as bytes gives the same answer.
            let bytes = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(extract(&bytes, InputFormat::Json, &cfg), strict);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let cfg = ExtractConfig::default();
            let _ = extract(&bytes, InputFormat::Json, &cfg);
            let _ = extract(&bytes, InputFormat::Ndjson, &cfg);
        }
    }
}
