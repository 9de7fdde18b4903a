//! Request authentication: short-lived JWT client assertions (SMART Backend Services style).
//!
//! Every API request carries `Authorization: Bearer <JWT>`, a compact JWS that the caller
//! signs itself for this one request:
//!
//! ```text
//! header  {"alg":"EdDSA"|"ES384"|"RS384", "typ":"JWT", "kid":"<participant id, 64 hex>"}
//! claims  {"iss":id, "sub":id, "aud":"<chain id>", "iat":n, "exp":n, "jti":"<>= 16 random bytes>"}
//! ```
//!
//! [`Verifier::verify`] accepts a token only if all of these hold:
//! - the token is at most [`MAX_TOKEN_BYTES`], three base64url parts without padding (and with
//!   canonical trailing bits), whose header and claims are JSON objects without duplicate
//!   members;
//! - `alg` is `EdDSA`, `ES384` or `RS384` (`none`, HS* and anything else are refused), `typ`
//!   is `JWT`, there is no `crit`, and `kid`, `iss` and `sub` are the same participant id;
//! - `aud` (a string, or an array of strings) names this chain;
//! - `0 < exp - iat <= max_ttl_secs`, `iat` and `nbf` (if any) are not later than
//!   `now + skew_secs`, and `now < exp + skew_secs`;
//! - the signature verifies under the participant's *current* key on the ledger: its Ed25519
//!   key for EdDSA (strict verification), or one of the keys it registered with
//!   `RegisterAuthKey` for ES384/RS384;
//! - the pair `(participant, jti)` was not accepted before; it is remembered until
//!   `exp + skew_secs`, after which the token is expired anyway.
//!
//! The cheap checks run before the signature and the replay cache is written only after it,
//! so forged tokens cost one signature check and cannot fill the cache.

mod error;
mod mint;
mod replay;

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use ehr_ledger::state::LedgerState;
use ehr_ledger::tx::{self as ledger_tx, AuthKeyMaterial, ParticipantId};
use ring::signature::{ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA384, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

pub use error::AuthError;
pub use mint::{
    es384_public_key_der, mint_eddsa, mint_es384, mint_rs384, p384_spki_der, rs384_public_key_der,
    rsa_spki_der,
};

/// The longest token accepted, in bytes (an RS384 token with a 4096-bit key is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The shortest accepted `jti` in base64url characters (16 bytes).
const MIN_JTI_B64: usize = 22;
/// The shortest accepted all-hex `jti` (16 bytes).
const MIN_JTI_HEX: usize = 32;
/// The longest accepted `jti`.
const MAX_JTI: usize = 128;
/// The most entries of an `aud` array.
const MAX_AUD_ENTRIES: usize = 16;

/// The JWS algorithm of a client assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthAlg {
    /// Ed25519 with the participant's ledger key.
    EdDsa,
    /// ECDSA P-384 / SHA-384 with a key registered by `RegisterAuthKey`.
    Es384,
    /// RSASSA-PKCS1-v1_5 / SHA-384 with a key registered by `RegisterAuthKey`.
    Rs384,
}

impl AuthAlg {
    /// The JWS `alg` name.
    pub fn jws_name(&self) -> &'static str {
        match self {
            AuthAlg::EdDsa => "EdDSA",
            AuthAlg::Es384 => "ES384",
            AuthAlg::Rs384 => "RS384",
        }
    }

    /// The algorithm named by a JWS `alg` value, if accepted.
    pub fn from_jws_name(name: &str) -> Option<AuthAlg> {
        match name {
            "EdDSA" => Some(AuthAlg::EdDsa),
            "ES384" => Some(AuthAlg::Es384),
            "RS384" => Some(AuthAlg::Rs384),
            _ => None,
        }
    }

    /// The ledger's registered-key algorithm, for ES384 and RS384.
    pub fn registered(&self) -> Option<ledger_tx::AuthAlg> {
        match self {
            AuthAlg::EdDsa => None,
            AuthAlg::Es384 => Some(ledger_tx::AuthAlg::Es384),
            AuthAlg::Rs384 => Some(ledger_tx::AuthAlg::Rs384),
        }
    }
}

/// Limits of token acceptance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The longest accepted lifetime `exp - iat`, in seconds.
    pub max_ttl_secs: u64,
    /// The tolerated clock difference between client and server, in seconds.
    pub skew_secs: u64,
    /// The most `jti`s remembered at once; when full of live entries, new tokens are refused.
    pub max_jti_cache: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_ttl_secs: 300,
            skew_secs: 60,
            max_jti_cache: 1_000_000,
        }
    }
}

impl AuthConfig {
    /// Checks the limits are usable: a lifetime of 1..=3600 s, a skew of at most 600 s, and a
    /// cache of at least 1 entry.
    pub fn validate(&self) -> Result<(), AuthError> {
        let bad = |field, reason: &str| {
            Err(AuthError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if !(1..=3600).contains(&self.max_ttl_secs) {
            return bad("max_ttl_secs", "must be in 1..=3600");
        }
        if self.skew_secs > 600 {
            return bad("skew_secs", "must be at most 600");
        }
        if self.max_jti_cache == 0 {
            return bad("max_jti_cache", "must be at least 1");
        }
        Ok(())
    }
}

/// Where the verifier finds participants' current keys (the ledger state, in the node).
pub trait KeyLookup {
    /// The participant's current Ed25519 key, if it is registered.
    fn ed25519(&self, id: &ParticipantId) -> Option<[u8; 32]>;
    /// The DER SubjectPublicKeyInfo of every key the participant registered for `alg` (none
    /// for [`AuthAlg::EdDsa`]).
    fn registered(&self, id: &ParticipantId, alg: AuthAlg) -> Vec<Vec<u8>>;
}

impl KeyLookup for LedgerState {
    fn ed25519(&self, id: &ParticipantId) -> Option<[u8; 32]> {
        self.participant(id).map(|p| p.key)
    }

    fn registered(&self, id: &ParticipantId, alg: AuthAlg) -> Vec<Vec<u8>> {
        let Some(want) = alg.registered() else {
            return Vec::new();
        };
        self.auth_key_entries(id)
            .iter()
            .filter(|k| k.alg == want)
            .map(|k| k.public_key_der.clone())
            .collect()
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Who it is.
    pub participant: ParticipantId,
    /// The algorithm its token was signed with.
    pub alg: AuthAlg,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`.
    pub exp: u64,
}

/// Verifies client assertions and remembers their `jti`s. Shared by all request handlers.
#[derive(Debug)]
pub struct Verifier {
    cfg: AuthConfig,
    cache: Mutex<replay::ReplayCache>,
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, the scheme
/// matched case-insensitively).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::MissingHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// The members of the header this verifier reads; others are ignored (except `crit`).
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    typ: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// The registered claims this verifier reads; others are ignored.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    jti: Option<Value>,
}

fn malformed(part: &'static str, reason: impl Into<String>) -> AuthError {
    AuthError::Malformed {
        part,
        reason: reason.into(),
    }
}

/// Decodes one base64url part strictly (no padding, canonical trailing bits).
fn b64(part: &'static str, s: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed(part, "not base64url without padding"))
}

/// Parses a JSON object into `T` without echoing any of its content in errors.
fn json<T: for<'de> Deserialize<'de>>(part: &'static str, bytes: &[u8]) -> Result<T, AuthError> {
    if bytes.first() != Some(&b'{') {
        return Err(malformed(part, "not a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let why = match e.classify() {
            serde_json::error::Category::Data => "a member is duplicated or of the wrong type",
            _ => "not valid JSON",
        };
        malformed(part, format!("{why} (column {})", e.column()))
    })
}

fn string<'a>(part: &'static str, v: &'a Option<Value>) -> Result<&'a str, AuthError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(malformed(part, "must be a string")),
        None => Err(malformed(part, "missing")),
    }
}

fn seconds(part: &'static str, v: &Option<Value>) -> Result<Option<u64>, AuthError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            malformed(
                part,
                "must be a non-negative integer number of seconds since the epoch",
            )
        }),
        Some(_) => Err(malformed(part, "must be a number")),
    }
}

fn participant_id(s: &str) -> Option<ParticipantId> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut id = [0u8; 32];
    hex::decode_to_slice(s, &mut id).ok()?;
    Some(ParticipantId(id))
}

fn check_jti(jti: &str) -> Result<(), AuthError> {
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !jti.bytes().all(b64url) {
        return Err(malformed("jti", "must be hex or base64url"));
    }
    let all_hex = jti.bytes().all(|b| b.is_ascii_hexdigit());
    let min = if all_hex { MIN_JTI_HEX } else { MIN_JTI_B64 };
    if jti.len() < min || jti.len() > MAX_JTI {
        return Err(malformed(
            "jti",
            format!(
                "must encode at least 16 random bytes ({MIN_JTI_HEX} hex or {MIN_JTI_B64} \
                 base64url characters) and be at most {MAX_JTI} characters"
            ),
        ));
    }
    Ok(())
}

fn check_audience(v: &Option<Value>, aud: &str) -> Result<(), AuthError> {
    let ok = match v {
        Some(Value::String(s)) => s == aud,
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_AUD_ENTRIES {
                return Err(malformed(
                    "aud",
                    format!("an array must have 1..={MAX_AUD_ENTRIES} entries"),
                ));
            }
            let mut found = false;
            for item in items {
                match item {
                    Value::String(s) => found |= s == aud,
                    _ => return Err(malformed("aud", "array entries must be strings")),
                }
            }
            found
        }
        Some(_) => return Err(malformed("aud", "must be a string or an array of strings")),
        None => return Err(malformed("aud", "missing")),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::WrongAudience)
    }
}

impl Verifier {
    /// A verifier with these limits and an empty replay cache.
    pub fn new(cfg: AuthConfig) -> Self {
        Verifier {
            cfg,
            cache: Mutex::new(replay::ReplayCache::default()),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// The number of `jti`s currently remembered.
    pub fn cached_jtis(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Verifies a client assertion for audience `aud` (the chain id) at server time `now_unix`
    /// (see the module documentation for the rules), and records its `jti`.
    pub fn verify(
        &self,
        token: &str,
        aud: &str,
        now_unix: u64,
        keys: &dyn KeyLookup,
    ) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed(
                "token",
                format!("longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "token",
                "must be three base64url parts separated by '.' (compact JWS)",
            ));
        };
        let signing_input = &token[..h64.len() + 1 + c64.len()];

        // Header.
        let header: RawHeader = json("header", &b64("header", h64)?)?;
        let alg = match &header.alg {
            Some(Value::String(a)) => {
                AuthAlg::from_jws_name(a).ok_or(AuthError::UnsupportedAlgorithm)?
            }
            Some(_) => return Err(malformed("alg", "must be a string")),
            None => return Err(malformed("alg", "missing")),
        };
        if !string("typ", &header.typ)?.eq_ignore_ascii_case("JWT") {
            return Err(malformed("typ", "must be \"JWT\""));
        }
        if header.crit.is_some() {
            return Err(malformed(
                "crit",
                "no critical header extensions are supported",
            ));
        }
        let kid = participant_id(string("kid", &header.kid)?).ok_or_else(|| {
            malformed(
                "kid",
                "must be the participant id (64 lowercase hex characters)",
            )
        })?;

        // Claims.
        let claims: RawClaims = json("claims", &b64("claims", c64)?)?;
        let iss = participant_id(string("iss", &claims.iss)?);
        let sub = participant_id(string("sub", &claims.sub)?);
        if iss != Some(kid) || sub != Some(kid) {
            return Err(AuthError::KeyIdMismatch);
        }
        check_audience(&claims.aud, aud)?;
        let iat = seconds("iat", &claims.iat)?.ok_or_else(|| malformed("iat", "missing"))?;
        let exp = seconds("exp", &claims.exp)?.ok_or_else(|| malformed("exp", "missing"))?;
        let nbf = seconds("nbf", &claims.nbf)?;
        let jti = string("jti", &claims.jti)?;
        check_jti(jti)?;

        // Time.
        let skew = self.cfg.skew_secs;
        if exp <= iat {
            return Err(malformed("exp", "must be after iat"));
        }
        if exp - iat > self.cfg.max_ttl_secs {
            return Err(AuthError::LifetimeTooLong {
                lifetime: exp - iat,
                max: self.cfg.max_ttl_secs,
            });
        }
        let starts = nbf.map_or(iat, |n| n.max(iat));
        if starts > now_unix.saturating_add(skew) {
            return Err(AuthError::NotYetValid {
                at: starts,
                now: now_unix,
                skew,
            });
        }
        let forget_at = exp.saturating_add(skew);
        if now_unix >= forget_at {
            return Err(AuthError::Expired {
                exp,
                now: now_unix,
                skew,
            });
        }

        // Signature.
        let signature = b64("signature", s64)?;
        verify_signature(alg, &kid, signing_input.as_bytes(), &signature, keys)?;

        // Replay.
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kid, jti, forget_at, now_unix, self.cfg.max_jti_cache)?;
        tracing::debug!(participant = %kid, alg = alg.jws_name(), "client assertion accepted");
        Ok(Principal {
            participant: kid,
            alg,
            jti: jti.to_owned(),
            exp,
        })
    }
}

/// Verifies `signature` over `msg` under the participant's current key(s) for `alg`.
fn verify_signature(
    alg: AuthAlg,
    kid: &ParticipantId,
    msg: &[u8],
    signature: &[u8],
    keys: &dyn KeyLookup,
) -> Result<(), AuthError> {
    let name = alg.jws_name();
    let bad = AuthError::BadSignature { alg: name };
    let unknown = AuthError::UnknownKeyId { alg: name };
    match alg {
        AuthAlg::EdDsa => {
            let key = keys.ed25519(kid).ok_or(unknown)?;
            let key = VerifyingKey::from_bytes(&key).map_err(|_| bad.clone())?;
            let sig: [u8; 64] = signature
                .try_into()
                .map_err(|_| malformed("signature", "an EdDSA signature is 64 bytes"))?;
            key.verify_strict(msg, &Signature::from_bytes(&sig))
                .map_err(|_| bad)
        }
        AuthAlg::Es384 | AuthAlg::Rs384 => {
            let ledger_alg = alg
                .registered()
                .expect("invariant: ES384 and RS384 are registered-key algorithms");
            let candidates = keys.registered(kid, alg);
            if candidates.is_empty() {
                return Err(unknown);
            }
            for der in &candidates {
                let ok = match ledger_tx::parse_auth_key(ledger_alg, der) {
                    Ok(AuthKeyMaterial::P384 { point }) => {
                        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                            .verify(msg, signature)
                            .is_ok()
                    }
                    Ok(AuthKeyMaterial::Rsa { pkcs1, .. }) => {
                        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA384, pkcs1)
                            .verify(msg, signature)
                            .is_ok()
                    }
                    Err(_) => {
                        tracing::warn!(participant = %kid, "registered auth key does not parse");
                        false
                    }
                };
                if ok {
                    return Ok(());
                }
            }
            Err(bad)
        }
    }
}

#[cfg(test)]
mod tests;
