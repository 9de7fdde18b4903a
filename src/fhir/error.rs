//! Why a FHIR upload was refused.
//!
//! Every variant says where (a JSON path such as `$.entry[3].resource.code.coding[0].system`,
//! prefixed with `line N:` for NDJSON) and why. No variant carries a value from the input: the
//! paths are built from the parameter table's key names and array indexes only, so an error can
//! be logged or returned to the client without leaking health data.

/// A malformed, hostile or oversized FHIR input, or an invalid extraction configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    /// A field of [`ExtractConfig`](super::ExtractConfig) is out of range.
    #[error("invalid FHIR extraction config: {field}: {reason}")]
    InvalidConfig {
        /// The config field.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The input is longer than the configured maximum.
    #[error("input of {len} bytes exceeds the maximum of {max} bytes")]
    InputTooLarge {
        /// The input length in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// One JSON document (the input, or an NDJSON line) is longer than the configured maximum.
    #[error("line {line}: JSON document of {len} bytes exceeds the maximum of {max} bytes")]
    DocumentTooLarge {
        /// 1-based line where the document starts.
        line: usize,
        /// The document's length in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input holds no resource at all (empty, or only blank NDJSON lines).
    #[error("input holds no FHIR resource")]
    Empty,
    /// The input (or one NDJSON line) is not JSON, or nests deeper than the parser allows.
    #[error("line {line}, column {column}: not valid JSON: {reason}")]
    Json {
        /// 1-based line of the input.
        line: usize,
        /// 1-based column within that line.
        column: usize,
        /// The parser's description (it never quotes the input).
        reason: String,
    },
    /// A value that must be a resource is not a JSON object.
    #[error("{at}: expected a FHIR resource (JSON object), found {found}")]
    NotAResource {
        /// Where in the input.
        at: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// A resource has no `resourceType`.
    #[error("{at}: resource has no resourceType")]
    MissingResourceType {
        /// Where in the input.
        at: String,
    },
    /// A resource's `resourceType` is not a string naming a resource type.
    #[error("{at}.resourceType: {reason}")]
    InvalidResourceType {
        /// Where in the input.
        at: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A Bundle's `entry` is malformed (not an array, an entry that is not an object, or an
    /// entry without a `resource`).
    #[error("{at}: {reason}")]
    BundleEntry {
        /// Where in the input.
        at: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Bundles nest deeper than the configured maximum.
    #[error("{at}: Bundles nested more than {max} deep")]
    BundleTooDeep {
        /// Where in the input.
        at: String,
        /// The configured maximum.
        max: usize,
    },
    /// An element a token search parameter reads has the wrong JSON type.
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        /// Where in the input.
        at: String,
        /// The JSON (or FHIR) type the parameter table says the element has.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A code, system or identifier value cannot become a token.
    #[error("{at}: {reason}")]
    InvalidValue {
        /// Where in the input.
        at: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The input holds more resources than the configured maximum.
    #[error("more than {max} resources")]
    TooManyResources {
        /// The configured maximum.
        max: usize,
    },
    /// The input yields more distinct keywords than the configured maximum.
    #[error("more than {max} distinct keywords")]
    TooManyKeywords {
        /// The configured maximum.
        max: usize,
    },
}

impl FhirError {
    /// True for errors about one element's type or value, the ones
    /// [`OnMalformed::Skip`](super::OnMalformed::Skip) skips instead of refusing.
    pub fn is_element_error(&self) -> bool {
        matches!(self, Self::WrongType { .. } | Self::InvalidValue { .. })
    }
}
