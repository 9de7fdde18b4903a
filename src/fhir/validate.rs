//! Limits and the checks applied to the values that become keywords.
//!
//! What is validated: the input's size, that it is JSON, that every resource is an object with
//! a well-formed `resourceType`, the structure of `Bundle.entry`, and the JSON type and value of
//! every element a token search parameter reads. This is not full FHIR validation: elements
//! that no parameter reads are not looked at.

use serde_json::Value;

use super::FhirError;

/// Longest token value (`system|code`, `system|value`, a primitive code), in bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Longest normalised text keyword, in characters; longer text is cut at this length (see
/// [`normalize_text`]).
pub const MAX_TEXT_CHARS: usize = 256;

/// Longest `resourceType` accepted (the longest R4 type name has 33 characters).
const MAX_RESOURCE_TYPE_LEN: usize = 64;

/// What to do with an element that has the wrong JSON type or an unusable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMalformed {
    /// Refuse the whole input with [`FhirError::WrongType`] or [`FhirError::InvalidValue`]
    /// (the default: an upload is all or nothing).
    #[default]
    Refuse,
    /// Skip the element, count it in [`Extraction::skipped`](super::Extraction::skipped) and
    /// log a warning with the field and path (never the value). Structural errors (not JSON,
    /// no `resourceType`, a Bundle entry without a resource, limits) still refuse.
    Skip,
}

/// Limits and policy of keyword extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractConfig {
    /// Largest input accepted, in bytes (default 64 MiB).
    pub max_input_bytes: usize,
    /// Largest single JSON document, in bytes: the whole input for [`InputFormat::Json`], one
    /// line for NDJSON (default 16 MiB). A parsed document takes several times its size in
    /// memory (a `serde_json::Value` node is 32 bytes, so a hostile `[[],[],...]` costs over
    /// 10 bytes of tree per input byte), so this bounds the parser's memory; NDJSON holds one
    /// line's tree at a time.
    ///
    /// [`InputFormat::Json`]: super::InputFormat::Json
    pub max_document_bytes: usize,
    /// Most resources in one input, counting Bundles and their entries (default 100,000).
    pub max_resources: usize,
    /// Most distinct keywords from one input (default 1,000,000).
    pub max_keywords: usize,
    /// How deep Bundles may nest inside Bundles (default 2: a Bundle whose entries may be
    /// Bundles whose entries are not).
    pub max_bundle_nesting: usize,
    /// What to do with a malformed element.
    pub on_malformed: OnMalformed,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            max_input_bytes: 64 << 20,
            max_document_bytes: 16 << 20,
            max_resources: 100_000,
            max_keywords: 1_000_000,
            max_bundle_nesting: 2,
            on_malformed: OnMalformed::Refuse,
        }
    }
}

impl ExtractConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), FhirError> {
        let bad = |field, reason| Err(FhirError::InvalidConfig { field, reason });
        if self.max_input_bytes == 0 {
            return bad("max_input_bytes", "must be at least 1");
        }
        if self.max_document_bytes == 0 {
            return bad("max_document_bytes", "must be at least 1");
        }
        if self.max_resources == 0 {
            return bad("max_resources", "must be at least 1");
        }
        if self.max_keywords == 0 {
            return bad("max_keywords", "must be at least 1");
        }
        // serde_json refuses nesting beyond 128 levels anyway; a Bundle level costs 4
        // (Bundle, entry array, entry, resource).
        if self.max_bundle_nesting > 16 {
            return bad("max_bundle_nesting", "must be at most 16");
        }
        Ok(())
    }
}

/// The JSON type of `v`, for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a `resourceType` value: a string of ASCII letters starting with an upper-case one.
pub fn check_resource_type<'a>(v: &'a Value, at: &str) -> Result<&'a str, FhirError> {
    let bad = |reason| FhirError::InvalidResourceType {
        at: at.to_owned(),
        reason,
    };
    let s = v.as_str().ok_or_else(|| bad("must be a string"))?;
    if s.is_empty() || s.len() > MAX_RESOURCE_TYPE_LEN {
        return Err(bad("must have 1 to 64 characters"));
    }
    if !s.as_bytes()[0].is_ascii_uppercase() || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad("must be ASCII letters starting with an upper-case one"));
    }
    Ok(s)
}

/// What a token part is, for the checks in [`check_token_part`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A `system` URI: must not contain `|`, which would make `system|code` ambiguous.
    System,
    /// A code, identifier value or other primitive.
    Value,
}

/// Checks a string that becomes part of a token: not empty, no control characters, no leading
/// or trailing whitespace (FHIR's `code` and `uri` forbid them), and for a system no `|`.
pub fn check_token_part(s: &str, part: Part, at: impl Fn() -> String) -> Result<(), FhirError> {
    let bad = |reason| FhirError::InvalidValue { at: at(), reason };
    if s.is_empty() {
        return Err(bad("empty string (FHIR forbids empty values)"));
    }
    if s.len() > MAX_TOKEN_BYTES {
        return Err(bad("longer than 1024 bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(bad("has leading or trailing whitespace"));
    }
    if part == Part::System && s.contains('|') {
        return Err(bad(
            "system contains '|', which would make the token ambiguous",
        ));
    }
    Ok(())
}

/// Normalises display text for a `:text` keyword: lower-cased (Unicode), runs of whitespace
/// folded to one space, trimmed, cut to [`MAX_TEXT_CHARS`] characters. `None` when nothing
/// is left. Clients searching for text must normalise their query with this same function.
pub fn normalize_text(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT_CHARS * 4));
    let mut chars = 0;
    'words: for word in s.split_whitespace() {
        if chars > 0 {
            if chars + 1 >= MAX_TEXT_CHARS {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            if chars == MAX_TEXT_CHARS {
                break 'words;
            }
            out.push(c);
            chars += 1;
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_config_is_valid_and_zero_limits_are_not() {
        ExtractConfig::default().validate().unwrap();
        let c = ExtractConfig {
            max_resources: 0,
            ..ExtractConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid FHIR extraction config: max_resources: must be at least 1"
        );
        let c = ExtractConfig {
            max_bundle_nesting: 17,
            ..ExtractConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn parse_tree_node_size_is_as_documented() {
        // ExtractConfig::max_document_bytes's memory estimate relies on this.
        assert_eq!(std::mem::size_of::<Value>(), 32);
    }

    #[test]
    fn text_is_lowercased_and_whitespace_folded() {
        assert_eq!(
            normalize_text("  Type 2\tDiabetes\n\n MELLITUS ").as_deref(),
            Some("type 2 diabetes mellitus")
        );
        assert_eq!(normalize_text("ÄRZTIN Öl").as_deref(), Some("ärztin öl"));
        assert_eq!(normalize_text(" \t\n"), None);
        assert_eq!(normalize_text(""), None);
    }

    #[test]
    fn long_text_is_cut_at_the_limit_without_a_trailing_space() {
        let long = "ab ".repeat(500);
        let n = normalize_text(&long).unwrap();
        assert!(n.chars().count() <= MAX_TEXT_CHARS);
        assert!(!n.ends_with(' '));
        assert!(n.starts_with("ab ab"));
        let one_word = "x".repeat(1000);
        assert_eq!(normalize_text(&one_word).unwrap().len(), MAX_TEXT_CHARS);
    }

    #[test]
    fn token_parts_are_checked() {
        let at = || "$.code".to_owned();
        check_token_part("http://loinc.org", Part::System, at).unwrap();
        check_token_part("E11.9", Part::Value, at).unwrap();
        check_token_part("a|b", Part::Value, at).unwrap();
        let reason = |s: &str, p| match check_token_part(s, p, at).unwrap_err() {
            FhirError::InvalidValue { reason, at } => {
                assert_eq!(at, "$.code");
                reason
            }
            e => panic!("unexpected {e}"),
        };
        assert_eq!(
            reason("", Part::Value),
            "empty string (FHIR forbids empty values)"
        );
        assert_eq!(
            reason("a\u{0}b", Part::Value),
            "contains a control character"
        );
        assert_eq!(
            reason(" x", Part::Value),
            "has leading or trailing whitespace"
        );
        assert_eq!(
            reason("http://x|1", Part::System),
            "system contains '|', which would make the token ambiguous"
        );
        assert_eq!(
            reason(&"x".repeat(1025), Part::Value),
            "longer than 1024 bytes"
        );
    }

    #[test]
    fn resource_types_are_checked() {
        let ok = Value::from("Observation");
        assert_eq!(check_resource_type(&ok, "$").unwrap(), "Observation");
        for bad in [
            Value::from(""),
            Value::from("observation"),
            Value::from("Obs ervation"),
            Value::from("Obs1"),
            Value::from("A".repeat(65)),
            Value::from(3),
            Value::Null,
        ] {
            assert!(check_resource_type(&bad, "$").is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent_and_bounded(s in "\\PC{0,300}") {
            if let Some(n) = normalize_text(&s) {
                prop_assert!(n.chars().count() <= MAX_TEXT_CHARS);
                prop_assert!(!n.starts_with(' ') && !n.ends_with(' ') && !n.contains("  "));
                // Lower-casing can lengthen a string (e.g. 'İ'), so the second pass may cut
                // again; it never changes a string already within the limit.
                let again = normalize_text(&n);
                if n.chars().count() < MAX_TEXT_CHARS {
                    prop_assert_eq!(again.as_deref(), Some(n.as_str()));
                }
            }
        }
    }
}
