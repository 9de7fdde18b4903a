//! The data key and the context an envelope is bound to.

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::SealError;

/// Length in bytes of a [`DataKey`].
pub const DATA_KEY_LEN: usize = 32;

/// Longest accepted policy id or record context, in bytes.
pub const MAX_CONTEXT_FIELD_LEN: usize = 4096;

/// A record's 256-bit data key: the secret every envelope of that record is sealed under.
///
/// Zeroized on drop; its `Debug` is redacted; it has no `Display` and no `Clone`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; DATA_KEY_LEN]);

impl DataKey {
    /// Draws a fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self, SealError> {
        let mut key = Self([0; DATA_KEY_LEN]);
        SystemRandom::new()
            .fill(&mut key.0)
            .map_err(|_| SealError::Random)?;
        Ok(key)
    }

    /// Wraps existing key bytes (for example a key unwrapped with CP-ABE).
    ///
    /// The caller should zeroize its own copy of `bytes`.
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies key bytes from a slice, which must be exactly [`DATA_KEY_LEN`] bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(SealError::InvalidConfig {
                field: "data key",
                reason: format!("must be {DATA_KEY_LEN} bytes, got {}", bytes.len()),
            });
        }
        let mut key = Self([0; DATA_KEY_LEN]);
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// The raw key bytes. Handle with care: do not log, print or store them unprotected.
    pub fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    /// A second owned copy, for adapters that outlive the caller's borrow.
    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// What an envelope is bound to: opening it under any other context fails.
///
/// The policy (or capsule) id is public; the optional record context (for example a record
/// id or a content type) is shown only by length in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealContext {
    policy_id: Vec<u8>,
    record: Option<Vec<u8>>,
}

impl SealContext {
    /// A context binding the policy or capsule id, with no record context.
    pub fn new(policy_id: impl Into<Vec<u8>>) -> Self {
        Self {
            policy_id: policy_id.into(),
            record: None,
        }
    }

    /// Adds a record context (distinct from having none, even when empty).
    #[must_use]
    pub fn with_record(mut self, record: impl Into<Vec<u8>>) -> Self {
        self.record = Some(record.into());
        self
    }

    /// The policy or capsule id.
    pub fn policy_id(&self) -> &[u8] {
        &self.policy_id
    }

    /// The record context, if any.
    pub fn record(&self) -> Option<&[u8]> {
        self.record.as_deref()
    }

    /// The unambiguous encoding that is bound (see the module docs), after checking lengths.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, SealError> {
        check_field("policy_id", &self.policy_id)?;
        let mut out = Vec::with_capacity(9 + self.policy_id.len());
        push_field(&mut out, &self.policy_id);
        match &self.record {
            None => out.push(0),
            Some(record) => {
                check_field("record", record)?;
                out.push(1);
                push_field(&mut out, record);
            }
        }
        Ok(out)
    }
}

fn check_field(field: &'static str, bytes: &[u8]) -> Result<(), SealError> {
    if bytes.len() > MAX_CONTEXT_FIELD_LEN {
        return Err(SealError::InvalidContext {
            field,
            reason: format!(
                "{} bytes, at most {MAX_CONTEXT_FIELD_LEN} allowed",
                bytes.len()
            ),
        });
    }
    Ok(())
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("context field length checked against the limit");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl std::fmt::Debug for SealContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealContext")
            .field("policy_id", &String::from_utf8_lossy(&self.policy_id))
            .field("record_len", &self.record.as_ref().map(Vec::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_debug_is_redacted() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        let shown = format!("{a:?}");
        assert_eq!(shown, "DataKey([redacted])");
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(DataKey::from_slice(&[7; 31]).is_err());
        let k = DataKey::from_slice(&[7; 32]).unwrap();
        assert_eq!(k.expose_secret(), &[7; 32]);
        assert_eq!(k.duplicate().expose_secret(), &[7; 32]);
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        let none = SealContext::new(b"p".to_vec()).encode().unwrap();
        let empty = SealContext::new(b"p".to_vec())
            .with_record(Vec::new())
            .encode()
            .unwrap();
        assert_ne!(none, empty);
        // Moving bytes between the fields changes the encoding.
        let a = SealContext::new(b"ab".to_vec()).with_record(b"c".to_vec());
        let b = SealContext::new(b"a".to_vec()).with_record(b"bc".to_vec());
        assert_ne!(a.encode().unwrap(), b.encode().unwrap());
    }

    #[test]
    fn oversized_context_is_rejected_with_field_name() {
        let ctx = SealContext::new(vec![0; MAX_CONTEXT_FIELD_LEN + 1]);
        let err = ctx.encode().unwrap_err();
        assert!(err.to_string().contains("policy_id"), "{err}");
        let ctx = SealContext::new(b"p".to_vec()).with_record(vec![0; MAX_CONTEXT_FIELD_LEN + 1]);
        assert!(ctx.encode().unwrap_err().to_string().contains("record"));
    }

    #[test]
    fn context_debug_hides_record() {
        let ctx = SealContext::new(b"policy-7".to_vec()).with_record(b"secret-record".to_vec());
        let shown = format!("{ctx:?}");
        assert!(shown.contains("policy-7"));
        assert!(!shown.contains("secret-record"));
    }
}
