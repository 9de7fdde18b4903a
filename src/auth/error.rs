//! Why a client assertion was refused (or could not be minted).
//!
//! No message ever contains the token or any part of it: a message names the field that is
//! wrong, why, and what the client should do.

/// Why a request's authentication failed, or a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no `Authorization` header.
    #[error("missing Authorization header: send `Authorization: Bearer <JWT client assertion>`")]
    MissingHeader,
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("Authorization header is not of the form `Bearer <JWT client assertion>`")]
    NotBearer,
    /// The token is not a well-formed compact JWT of the expected shape.
    #[error("malformed token: {part}: {reason}")]
    Malformed {
        /// Which part is wrong (`token`, `header`, `claims`, `signature`, or a field name).
        part: &'static str,
        /// Why, without any of the token's content.
        reason: String,
    },
    /// The header names an algorithm that is not accepted (only EdDSA, ES384 and RS384 are).
    #[error("algorithm not accepted: sign with EdDSA, ES384 or RS384 (`none` and HS* are refused)")]
    UnsupportedAlgorithm,
    /// `kid`, `iss` and `sub` do not all name the same participant.
    #[error("kid, iss and sub must all be the caller's participant id (64 lowercase hex)")]
    KeyIdMismatch,
    /// The `kid` names no participant with a current key for the token's algorithm.
    #[error(
        "unknown key id: no participant with a current {alg} key is registered under this kid \
         (EdDSA uses the ledger key; register ES384/RS384 keys with RegisterAuthKey)"
    )]
    UnknownKeyId {
        /// The token's algorithm.
        alg: &'static str,
    },
    /// The signature does not verify under the participant's current key(s).
    #[error(
        "bad signature: the token does not verify under the participant's current {alg} key(s) \
         (a rotated or revoked key no longer authenticates)"
    )]
    BadSignature {
        /// The token's algorithm.
        alg: &'static str,
    },
    /// The token expired (beyond the clock-skew tolerance).
    #[error("token expired at {exp} (server time {now}, skew tolerance {skew} s): mint a new one")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The server's time.
        now: u64,
        /// The tolerated clock skew in seconds.
        skew: u64,
    },
    /// The token's `iat` or `nbf` lies in the future (beyond the clock-skew tolerance).
    #[error(
        "token not yet valid (issued or valid from {at}, server time {now}, skew tolerance \
         {skew} s): check the client's clock"
    )]
    NotYetValid {
        /// The token's `iat` or `nbf`, whichever is later.
        at: u64,
        /// The server's time.
        now: u64,
        /// The tolerated clock skew in seconds.
        skew: u64,
    },
    /// `exp - iat` exceeds the accepted maximum lifetime.
    #[error("token lifetime {lifetime} s exceeds the maximum {max} s: use a shorter exp")]
    LifetimeTooLong {
        /// `exp - iat`.
        lifetime: u64,
        /// The accepted maximum.
        max: u64,
    },
    /// `aud` does not name this chain.
    #[error("wrong audience: aud must be this consortium's chain id")]
    WrongAudience,
    /// The `jti` was already accepted and has not expired yet.
    #[error("replayed token: this jti was already used; mint a fresh token for every request")]
    Replayed,
    /// The replay cache is full of live entries, so no new token can be accepted safely.
    #[error("too many live tokens: the replay cache is full; retry in a few seconds")]
    ReplayCacheFull,
    /// A signing key given to a mint function is not a PKCS#8 key of the named algorithm.
    #[error("signing key: {0}")]
    SigningKey(String),
    /// An [`crate::auth::AuthConfig`] field is out of range.
    #[error("auth config: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}
