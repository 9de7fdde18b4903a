//! Minting client assertions (for the CLI, clients and tests), and the SubjectPublicKeyInfo
//! encoding of ES384/RS384 keys for `RegisterAuthKey`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use ehr_ledger::tx::ParticipantId;
use rand_core::{OsRng, RngCore};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA384, RsaKeyPair,
};

use super::{AuthAlg, AuthError};

/// A fresh `jti`: 16 random bytes, base64url.
fn fresh_jti() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The signing input `b64(header) "." b64(claims)` of a token for `participant`.
fn signing_input(
    alg: AuthAlg,
    participant: &ParticipantId,
    aud: &str,
    now_unix: u64,
    ttl_secs: u64,
) -> String {
    let id = participant.to_string();
    let header = serde_json::json!({"alg": alg.jws_name(), "typ": "JWT", "kid": id});
    let claims = serde_json::json!({
        "iss": id,
        "sub": id,
        "aud": aud,
        "iat": now_unix,
        "exp": now_unix.saturating_add(ttl_secs),
        "jti": fresh_jti(),
    });
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn finish(input: String, signature: &[u8]) -> String {
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Mints an EdDSA client assertion of the participant whose ledger key is `key`, for audience
/// `aud` (the chain id), issued at `now_unix` and valid for `ttl_secs` (at most the verifier's
/// maximum, 300 s by default), with a fresh random `jti`.
pub fn mint_eddsa(key: &SigningKey, aud: &str, now_unix: u64, ttl_secs: u64) -> String {
    let id = ParticipantId(key.verifying_key().to_bytes());
    let input = signing_input(AuthAlg::EdDsa, &id, aud, now_unix, ttl_secs);
    let signature = key.sign(input.as_bytes());
    finish(input, &signature.to_bytes())
}

fn es384_key(pkcs8: &[u8]) -> Result<EcdsaKeyPair, AuthError> {
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|e| AuthError::SigningKey(format!("not a PKCS#8 P-384 ECDSA key ({e})")))
}

fn rs384_key(pkcs8: &[u8]) -> Result<RsaKeyPair, AuthError> {
    let key = RsaKeyPair::from_pkcs8(pkcs8)
        .map_err(|e| AuthError::SigningKey(format!("not a PKCS#8 RSA key ({e})")))?;
    let bits = key.public().modulus_len() * 8;
    if !(ehr_ledger::tx::MIN_RSA_MODULUS_BITS..=ehr_ledger::tx::MAX_RSA_MODULUS_BITS)
        .contains(&bits)
    {
        return Err(AuthError::SigningKey(format!(
            "RSA modulus of {bits} bits: the ledger accepts 2048..=4096"
        )));
    }
    Ok(key)
}

/// Mints an ES384 client assertion for `participant` with the PKCS#8 P-384 private key
/// `pkcs8` (whose public key the participant registered with `RegisterAuthKey`).
pub fn mint_es384(
    pkcs8: &[u8],
    participant: &ParticipantId,
    aud: &str,
    now_unix: u64,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let key = es384_key(pkcs8)?;
    let input = signing_input(AuthAlg::Es384, participant, aud, now_unix, ttl_secs);
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| AuthError::SigningKey("ECDSA signing failed".into()))?;
    Ok(finish(input, signature.as_ref()))
}

/// Mints an RS384 client assertion for `participant` with the PKCS#8 RSA private key `pkcs8`
/// (2048..=4096 bits; its public key registered with `RegisterAuthKey`).
pub fn mint_rs384(
    pkcs8: &[u8],
    participant: &ParticipantId,
    aud: &str,
    now_unix: u64,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let key = rs384_key(pkcs8)?;
    let input = signing_input(AuthAlg::Rs384, participant, aud, now_unix, ttl_secs);
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA384,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| AuthError::SigningKey("RSA signing failed".into()))?;
    Ok(finish(input, &signature))
}

/// The DER SubjectPublicKeyInfo (for `RegisterAuthKey`) of a PKCS#8 P-384 private key.
pub fn es384_public_key_der(pkcs8: &[u8]) -> Result<Vec<u8>, AuthError> {
    Ok(p384_spki_der(es384_key(pkcs8)?.public_key().as_ref()))
}

/// The DER SubjectPublicKeyInfo (for `RegisterAuthKey`) of a PKCS#8 RSA private key.
pub fn rs384_public_key_der(pkcs8: &[u8]) -> Result<Vec<u8>, AuthError> {
    Ok(rsa_spki_der(rs384_key(pkcs8)?.public().as_ref()))
}

/// DER SubjectPublicKeyInfo prefix of a P-384 key: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// secp384r1 }, BIT STRING (0 unused bits) ... } for a 97-byte uncompressed point.
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// The DER SubjectPublicKeyInfo of a P-384 public key given as a 97-byte uncompressed SEC1
/// point.
///
/// # Panics
/// If `point` is not 97 bytes (a broken invariant of the caller).
pub fn p384_spki_der(point: &[u8]) -> Vec<u8> {
    assert_eq!(
        point.len(),
        97,
        "invariant: a P-384 uncompressed point is 97 bytes"
    );
    [&P384_SPKI_PREFIX[..], point].concat()
}

/// A DER TLV with a definite length (content shorter than 64 KiB).
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = Vec::with_capacity(n + 4);
    out.push(tag);
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        _ => {
            assert!(n <= 0xffff, "invariant: DER content under 64 KiB");
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
    }
    out.extend_from_slice(content);
    out
}

/// The DER SubjectPublicKeyInfo of an RSA public key given as a PKCS#1 `RSAPublicKey`.
pub fn rsa_spki_der(pkcs1: &[u8]) -> Vec<u8> {
    const ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = Vec::with_capacity(pkcs1.len() + 1);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    der_tlv(0x30, &[&ALG[..], &der_tlv(0x03, &bits)].concat())
}
