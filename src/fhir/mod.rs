//! FHIR R4 keyword extraction for the upload path.
//!
//! A hospital's upload (one resource, a Bundle, or NDJSON with one resource per line) is parsed
//! with `serde_json` (no generated FHIR model crates) and walked along the FHIR R4 **token
//! search parameters** of the clinical resource types ([`params`], generated from the official
//! `SearchParameter-*.json`). The result is a sorted, de-duplicated set of [`Keyword`]s, which
//! the search layer turns into opaque index labels.
//!
//! # Keyword forms
//! | field | value | from |
//! |---|---|---|
//! | `_type` | `Observation` | every resource's `resourceType` (Bundles and their entries) |
//! | `Condition.code` | `http://hl7.org/fhir/sid/icd-10-cm\|E11.9` | a Coding with system and code |
//! | `Condition.code` | `\|E11.9` | a Coding with a code and no system |
//! | `Patient.identifier` | `urn:oid:1.2.3\|12345` (or `\|12345`) | an Identifier's system and value |
//! | `Patient.gender` | `female` | a primitive `code` (its system is implicit), `boolean` `true`/`false` |
//! | `Condition.code:text` | `type 2 diabetes mellitus` | `CodeableConcept.text` and `Coding.display`, normalised by [`normalize_text`] |
//! | `_security`, `_tag` | `system\|code`; `_security:text` ... | `meta.security`, `meta.tag` of every resource |
//!
//! The field is `ResourceType.parameter-code`, as in FHIR search (`Encounter.reason-code`), or
//! just the code for the parameters every resource has. Text keywords use the field followed by
//! FHIR's `:text` modifier, so a text can never be confused with a code. This follows FHIR
//! token search: `system|code` and `|code` match exactly (case-sensitive); a CodeableConcept
//! yields a token for each of its codings. Not indexed: the bare code in any system (`p=code`)
//! and `system|` (search every system you accept, or every code you accept, instead), the
//! `:above`/`:below`/`:in` hierarchies, Identifier `:of-type`, single words of a text (only the
//! whole normalised text), contained resources, and references
//! (`MedicationRequest.medicationReference` is not resolved).
//!
//! # Validation (the upload path)
//! Refused with a [`FhirError`] that names the place (a JSON path, with the line for NDJSON)
//! and the reason: input, or one JSON document (the input, or an NDJSON line), over its size
//! limit, not JSON (serde_json also refuses nesting deeper than 128), a resource that is not an object or lacks a well-formed `resourceType`, a
//! Bundle's `entry` that is not an array of objects with a `resource` (so a transaction
//! `DELETE` entry is refused), Bundles nested too deep, too many resources or keywords. An
//! element a token parameter reads that has the wrong JSON type (a string where a
//! CodeableConcept belongs, a non-array where the element repeats) or an unusable value (empty,
//! control characters, surrounding whitespace, `|` in a system, over 1 KiB) refuses the input by
//! default; with [`OnMalformed::Skip`] that parameter's remaining elements in that resource are
//! skipped instead, counted and logged with field and path. Elements no parameter reads are not
//! checked: this is not a FHIR validator. No input makes extraction panic.
//!
//! # Confidentiality
//! Nothing here logs a keyword value or resource content; errors carry JSON paths built from
//! the table's key names and array indexes, never input values. [`Keyword`]'s `Debug` redacts
//! the value; use [`Keyword::index_string`] only where the plaintext is meant to go (the
//! client-side token derivation).

pub mod error;
mod extract;
pub mod params;
mod validate;

pub use error::FhirError;
pub use extract::{Extraction, InputFormat, extract, extract_value};
pub use params::{TokenParam, ValueKind};
pub use validate::{ExtractConfig, MAX_TEXT_CHARS, MAX_TOKEN_BYTES, OnMalformed, normalize_text};

/// One search keyword of a record: a field (which search parameter) and a value.
///
/// Ordered by field, then value (byte-wise), so sets of keywords are deterministic.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keyword {
    /// The search parameter: `Condition.code`, `Condition.code:text`, `_type`, `_security`.
    pub field: String,
    /// The value: `system|code`, `|code`, a primitive code, or normalised text.
    pub value: String,
}

impl Keyword {
    /// Builds a keyword.
    pub fn new(field: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
        }
    }

    /// `field:value`, the plaintext form the index label is derived from
    /// (e.g. `Condition.code:http://hl7.org/fhir/sid/icd-10-cm|E11.9`). Never log it.
    pub fn index_string(&self) -> String {
        format!("{}:{}", self.field, self.value)
    }
}

impl std::fmt::Debug for Keyword {
    /// Shows the field and the value's length only: keyword values are health data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyword")
            .field("field", &self.field)
            .field(
                "value",
                &format_args!("<{} bytes redacted>", self.value.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_value() {
        let k = Keyword::new("Condition.code", "http://hl7.org/fhir/sid/icd-10-cm|E11.9");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("E11.9"), "{dbg}");
        assert!(
            dbg.contains("Condition.code") && dbg.contains("39 bytes redacted"),
            "{dbg}"
        );
        assert_eq!(
            k.index_string(),
            "Condition.code:http://hl7.org/fhir/sid/icd-10-cm|E11.9"
        );
    }

    #[test]
    fn keywords_sort_by_field_then_value() {
        let mut v = [
            Keyword::new("b", "a"),
            Keyword::new("a", "z"),
            Keyword::new("a", "b"),
        ];
        v.sort();
        let s: Vec<_> = v.iter().map(Keyword::index_string).collect();
        assert_eq!(s, ["a:b", "a:z", "b:a"]);
    }
}
