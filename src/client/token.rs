//! Bearer tokens for the node: JWT client assertions signed with the participant's Ed25519
//! key (header `{"alg":"EdDSA","typ":"JWT","kid":id}`, claims `iss = sub = id`, `aud` = chain
//! id, `iat`, `exp`, a random 128-bit `jti`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use rand::RngCore as _;

/// Mints a token valid from `now_unix` for `ttl_secs`.
pub fn mint_eddsa(key: &SigningKey, aud: &str, now_unix: u64, ttl_secs: u64) -> String {
    let id = hex::encode(key.verifying_key().to_bytes());
    let mut jti = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut jti);
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": id});
    let claims = serde_json::json!({
        "iss": id, "sub": id, "aud": aud,
        "iat": now_unix, "exp": now_unix + ttl_secs, "jti": hex::encode(jti),
    });
    let mut out = B64.encode(header.to_string());
    out.push('.');
    out.push_str(&B64.encode(claims.to_string()));
    let sig = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64.encode(sig.to_bytes()));
    out
}
