//! Tests of client assertion verification (the module documentation lists the rules).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use ehr_ledger::app::{App, TxOutcome};
use ehr_ledger::state::{Genesis, GenesisParticipant, LedgerState};
use ehr_ledger::tx::{ParticipantId, Role, TxBody, TxKind, auth_key_hash};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use super::*;

const AUD: &str = "ehr-test";
const NOW: u64 = 1_800_000_000;
/// Test-only RSA keys (PKCS#8 DER), generated for these tests and used nowhere else.
const RSA_A: &[u8] = include_bytes!("testdata/rsa2048-a.pk8");
const RSA_B: &[u8] = include_bytes!("testdata/rsa2048-b.pk8");
const RSA_4096: &[u8] = include_bytes!("testdata/rsa4096.pk8");

fn ed(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn id_of(k: &SigningKey) -> ParticipantId {
    ParticipantId(k.verifying_key().to_bytes())
}

fn p384_pkcs8() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A fake key directory.
#[derive(Default)]
struct Keys {
    ed: BTreeMap<ParticipantId, [u8; 32]>,
    reg: BTreeMap<(ParticipantId, AuthAlg), Vec<Vec<u8>>>,
}

impl Keys {
    fn with(k: &SigningKey) -> Keys {
        let mut keys = Keys::default();
        keys.ed.insert(id_of(k), k.verifying_key().to_bytes());
        keys
    }

    fn register(&mut self, who: ParticipantId, alg: AuthAlg, der: Vec<u8>) {
        self.reg.entry((who, alg)).or_default().push(der);
    }
}

impl KeyLookup for Keys {
    fn ed25519(&self, id: &ParticipantId) -> Option<[u8; 32]> {
        self.ed.get(id).copied()
    }

    fn registered(&self, id: &ParticipantId, alg: AuthAlg) -> Vec<Vec<u8>> {
        self.reg.get(&(*id, alg)).cloned().unwrap_or_default()
    }
}

fn verifier() -> Verifier {
    Verifier::new(AuthConfig::default())
}

fn enc(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn header(k: &SigningKey) -> Value {
    json!({"alg": "EdDSA", "typ": "JWT", "kid": id_of(k).to_string()})
}

fn claims(k: &SigningKey) -> Value {
    let id = id_of(k).to_string();
    json!({"iss": id, "sub": id, "aud": AUD, "iat": NOW, "exp": NOW + 120,
           "jti": "0123456789abcdef0123456789abcdef"})
}

/// An EdDSA token with the given header and claims JSON, correctly signed by `k`.
fn forge_raw(h: &str, c: &str, k: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h),
        URL_SAFE_NO_PAD.encode(c)
    );
    let sig = k.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn forge(h: &Value, c: &Value, k: &SigningKey) -> String {
    forge_raw(&h.to_string(), &c.to_string(), k)
}

/// `claims(k)` with `field` replaced.
fn claims_with(k: &SigningKey, field: &str, v: Value) -> Value {
    let mut c = claims(k);
    c[field] = v;
    c
}

fn header_with(k: &SigningKey, field: &str, v: Value) -> Value {
    let mut h = header(k);
    h[field] = v;
    h
}

fn err(token: &str, keys: &Keys) -> AuthError {
    verifier().verify(token, AUD, NOW, keys).unwrap_err()
}

fn malformed_part(e: AuthError) -> &'static str {
    match e {
        AuthError::Malformed { part, .. } => part,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn valid_tokens_of_every_algorithm() {
    let k = ed(1);
    let me = id_of(&k);
    let mut keys = Keys::with(&k);
    let ec = p384_pkcs8();
    keys.register(me, AuthAlg::Es384, es384_public_key_der(&ec).unwrap());
    keys.register(me, AuthAlg::Rs384, rs384_public_key_der(RSA_A).unwrap());
    keys.register(me, AuthAlg::Rs384, rs384_public_key_der(RSA_4096).unwrap());
    let v = verifier();
    let tokens = [
        (AuthAlg::EdDsa, mint_eddsa(&k, AUD, NOW, 300)),
        (AuthAlg::Es384, mint_es384(&ec, &me, AUD, NOW, 300).unwrap()),
        (
            AuthAlg::Rs384,
            mint_rs384(RSA_A, &me, AUD, NOW, 300).unwrap(),
        ),
        (
            AuthAlg::Rs384,
            mint_rs384(RSA_4096, &me, AUD, NOW, 60).unwrap(),
        ),
    ];
    for (alg, token) in &tokens {
        let p = v.verify(token, AUD, NOW + 10, &keys).unwrap();
        assert_eq!(p.participant, me);
        assert_eq!(p.alg, *alg);
        assert!(p.exp == NOW + 300 || p.exp == NOW + 60);
        assert_eq!(URL_SAFE_NO_PAD.decode(&p.jti).unwrap().len(), 16);
    }
    assert_eq!(v.cached_jtis(), 4);
    // Registered keys are per algorithm: an ES384 token does not verify against RSA keys.
    let mut only_rsa = Keys::with(&k);
    only_rsa.register(me, AuthAlg::Rs384, rs384_public_key_der(RSA_A).unwrap());
    let t = mint_es384(&ec, &me, AUD, NOW, 300).unwrap();
    assert_eq!(err(&t, &only_rsa), AuthError::UnknownKeyId { alg: "ES384" });
    // The SPKI the helpers produce is what the ledger accepts.
    ehr_ledger::tx::parse_auth_key(
        ehr_ledger::tx::AuthAlg::Es384,
        &es384_public_key_der(&ec).unwrap(),
    )
    .unwrap();
    ehr_ledger::tx::parse_auth_key(
        ehr_ledger::tx::AuthAlg::Rs384,
        &rs384_public_key_der(RSA_B).unwrap(),
    )
    .unwrap();
    // A signing key of the wrong kind is refused with a clear error.
    assert!(matches!(
        mint_es384(RSA_A, &me, AUD, NOW, 60),
        Err(AuthError::SigningKey(_))
    ));
    assert!(matches!(
        mint_rs384(&ec, &me, AUD, NOW, 60),
        Err(AuthError::SigningKey(_))
    ));
}

#[test]
fn bearer_header() {
    assert_eq!(bearer_token(None), Err(AuthError::MissingHeader));
    assert_eq!(bearer_token(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
    assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "abc.def.ghi", ""] {
        assert_eq!(
            bearer_token(Some(bad)),
            Err(AuthError::NotBearer),
            "{bad:?}"
        );
    }
}

#[test]
fn malformed_tokens() {
    let k = ed(1);
    let keys = Keys::with(&k);
    let good = forge(&header(&k), &claims(&k), &k);
    verifier().verify(&good, AUD, NOW, &keys).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "token"),
        ("a.b".into(), "token"),
        (format!("{good}.x"), "token"),
        ("x".repeat(MAX_TOKEN_BYTES + 1), "token"),
        (format!("{}=.{}.{}", parts[0], parts[1], parts[2]), "header"),
        (format!("{}.{}+.{}", parts[0], parts[1], parts[2]), "claims"),
        (format!("{}.{}.{}", parts[0], parts[1], "!!"), "signature"),
        (format!("{}.{}.", parts[0], parts[1]), "signature"),
        (forge_raw("[1]", &claims(&k).to_string(), &k), "header"),
        (
            forge_raw("{\"alg\":", &claims(&k).to_string(), &k),
            "header",
        ),
        (forge_raw(&header(&k).to_string(), "null", &k), "claims"),
        (forge_raw(&header(&k).to_string(), "{}", &k), "iss"),
        (
            forge_raw(
                &format!(
                    "{{\"alg\":\"EdDSA\",\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"{}\"}}",
                    id_of(&k)
                ),
                &claims(&k).to_string(),
                &k,
            ),
            "header",
        ),
        (
            forge(&header_with(&k, "alg", json!(5)), &claims(&k), &k),
            "alg",
        ),
        (
            forge(&header_with(&k, "typ", json!("JOSE")), &claims(&k), &k),
            "typ",
        ),
        (
            forge(&header_with(&k, "typ", Value::Null), &claims(&k), &k),
            "typ",
        ),
        (
            forge(&header_with(&k, "crit", json!(["exp"])), &claims(&k), &k),
            "crit",
        ),
        (
            forge(&header_with(&k, "kid", json!("abc")), &claims(&k), &k),
            "kid",
        ),
        (
            forge(
                &header_with(&k, "kid", json!(id_of(&k).to_string().to_uppercase())),
                &claims(&k),
                &k,
            ),
            "kid",
        ),
        (
            forge(&header(&k), &claims_with(&k, "iat", json!("now")), &k),
            "iat",
        ),
        (
            forge(&header(&k), &claims_with(&k, "iat", json!(-5)), &k),
            "iat",
        ),
        (
            forge(&header(&k), &claims_with(&k, "exp", json!(1.5e9)), &k),
            "exp",
        ),
        (
            forge(&header(&k), &claims_with(&k, "exp", Value::Null), &k),
            "exp",
        ),
        (
            forge(&header(&k), &claims_with(&k, "nbf", json!("x")), &k),
            "nbf",
        ),
        (
            forge(&header(&k), &claims_with(&k, "exp", json!(NOW)), &k),
            "exp",
        ),
        (
            forge(&header(&k), &claims_with(&k, "jti", json!("short")), &k),
            "jti",
        ),
        (
            forge(
                &header(&k),
                &claims_with(&k, "jti", json!("0123456789abcdef0123456789abcde")),
                &k,
            ),
            "jti",
        ),
        (
            forge(
                &header(&k),
                &claims_with(&k, "jti", json!("a b c d e f g h i j k l m n")),
                &k,
            ),
            "jti",
        ),
        (
            forge(
                &header(&k),
                &claims_with(&k, "jti", json!("x".repeat(129))),
                &k,
            ),
            "jti",
        ),
        (
            forge(&header(&k), &claims_with(&k, "jti", json!(12345)), &k),
            "jti",
        ),
        (
            forge(&header(&k), &claims_with(&k, "aud", json!(7)), &k),
            "aud",
        ),
        (
            forge(&header(&k), &claims_with(&k, "aud", json!([])), &k),
            "aud",
        ),
        (
            forge(&header(&k), &claims_with(&k, "aud", json!([AUD, 1])), &k),
            "aud",
        ),
    ];
    for (token, part) in cases {
        let e = err(&token, &keys);
        let msg = e.to_string();
        assert_eq!(malformed_part(e), part, "{msg}");
    }
    // A base64url-encoded jti of 22 characters (16 bytes) is enough; so is a uuid-free
    // 32-character hex one (the default claims).
    let c = claims_with(&k, "jti", json!("AAECAwQFBgcICQoLDA0ODw"));
    verifier()
        .verify(&forge(&header(&k), &c, &k), AUD, NOW, &keys)
        .unwrap();
}

#[test]
fn algorithm_and_identity_failures() {
    let k = ed(1);
    let other = ed(2);
    let mut keys = Keys::with(&k);
    keys.ed
        .insert(id_of(&other), other.verifying_key().to_bytes());
    for alg in [
        "none", "HS256", "HS384", "HS512", "RS256", "ES256", "PS384", "eddsa", "",
    ] {
        let t = forge(&header_with(&k, "alg", json!(alg)), &claims(&k), &k);
        assert_eq!(err(&t, &keys), AuthError::UnsupportedAlgorithm, "{alg}");
    }
    // An unsigned token (`alg: none`, empty signature) is refused before anything else.
    let unsigned = format!(
        "{}.{}.",
        enc(&header_with(&k, "alg", json!("none"))),
        enc(&claims(&k))
    );
    assert_eq!(err(&unsigned, &keys), AuthError::UnsupportedAlgorithm);
    // kid, iss and sub must agree.
    let oid = json!(id_of(&other).to_string());
    for field in ["iss", "sub"] {
        let t = forge(&header(&k), &claims_with(&k, field, oid.clone()), &k);
        assert_eq!(err(&t, &keys), AuthError::KeyIdMismatch, "{field}");
    }
    let t = forge(&header_with(&k, "kid", oid.clone()), &claims(&k), &k);
    assert_eq!(err(&t, &keys), AuthError::KeyIdMismatch);
    // A token claiming to be another registered participant but signed by k.
    let mut c = claims(&k);
    c["iss"] = oid.clone();
    c["sub"] = oid.clone();
    let t = forge(&header_with(&k, "kid", oid), &c, &k);
    assert_eq!(err(&t, &keys), AuthError::BadSignature { alg: "EdDSA" });
    // Unknown participants.
    let stranger = ed(3);
    let t = mint_eddsa(&stranger, AUD, NOW, 60);
    assert_eq!(err(&t, &keys), AuthError::UnknownKeyId { alg: "EdDSA" });
    let t = mint_rs384(RSA_A, &id_of(&stranger), AUD, NOW, 60).unwrap();
    assert_eq!(err(&t, &keys), AuthError::UnknownKeyId { alg: "RS384" });
    // Audience.
    let t = mint_eddsa(&k, "other-chain", NOW, 60);
    assert_eq!(err(&t, &keys), AuthError::WrongAudience);
    let t = forge(&header(&k), &claims_with(&k, "aud", json!(["a", "b"])), &k);
    assert_eq!(err(&t, &keys), AuthError::WrongAudience);
    let t = forge(&header(&k), &claims_with(&k, "aud", json!(["a", AUD])), &k);
    verifier().verify(&t, AUD, NOW, &keys).unwrap();
    // A wrong-length EdDSA signature is malformed, a wrong one is a bad signature.
    let good = mint_eddsa(&k, AUD, NOW, 60);
    let (input, _) = good.rsplit_once('.').unwrap();
    let short = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 63]));
    assert_eq!(malformed_part(err(&short, &keys)), "signature");
    let zero = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
    assert_eq!(err(&zero, &keys), AuthError::BadSignature { alg: "EdDSA" });
}

#[test]
fn time_rules_and_skew_both_ways() {
    let k = ed(1);
    let keys = Keys::with(&k);
    let at = |iat: u64, exp: u64| {
        let mut c = claims(&k);
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        c["jti"] = json!(URL_SAFE_NO_PAD.encode([
            iat as u8,
            exp as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            (iat >> 8) as u8
        ]));
        forge(&header(&k), &c, &k)
    };
    let v = verifier();
    // Client clock ahead by up to the skew: accepted; beyond: not yet valid.
    v.verify(&at(NOW + 60, NOW + 120), AUD, NOW, &keys).unwrap();
    assert_eq!(
        v.verify(&at(NOW + 61, NOW + 120), AUD, NOW, &keys),
        Err(AuthError::NotYetValid {
            at: NOW + 61,
            now: NOW,
            skew: 60
        })
    );
    // Client clock behind: accepted until exp + skew.
    v.verify(&at(NOW - 200, NOW - 59), AUD, NOW, &keys).unwrap();
    assert_eq!(
        v.verify(&at(NOW - 200, NOW - 60), AUD, NOW, &keys),
        Err(AuthError::Expired {
            exp: NOW - 60,
            now: NOW,
            skew: 60
        })
    );
    // Lifetime.
    v.verify(&at(NOW, NOW + 300), AUD, NOW, &keys).unwrap();
    assert_eq!(
        v.verify(&at(NOW, NOW + 301), AUD, NOW, &keys),
        Err(AuthError::LifetimeTooLong {
            lifetime: 301,
            max: 300
        })
    );
    // nbf in the future beyond the skew.
    let t = forge(&header(&k), &claims_with(&k, "nbf", json!(NOW + 100)), &k);
    assert!(matches!(
        v.verify(&t, AUD, NOW, &keys),
        Err(AuthError::NotYetValid { at, .. }) if at == NOW + 100
    ));
    // Near the end of time nothing overflows.
    let t = at(u64::MAX - 10, u64::MAX);
    assert!(matches!(
        v.verify(&t, AUD, NOW, &keys),
        Err(AuthError::NotYetValid { .. })
    ));
    assert!(matches!(
        v.verify(&at(NOW, NOW + 1), AUD, u64::MAX, &keys),
        Err(AuthError::Expired { .. })
    ));
    // A custom configuration tightens the limits.
    let strict = Verifier::new(AuthConfig {
        max_ttl_secs: 60,
        skew_secs: 0,
        max_jti_cache: 10,
    });
    assert!(matches!(
        strict.verify(&at(NOW + 1, NOW + 30), AUD, NOW, &keys),
        Err(AuthError::NotYetValid { .. })
    ));
    assert!(matches!(
        strict.verify(&at(NOW, NOW + 61), AUD, NOW, &keys),
        Err(AuthError::LifetimeTooLong { .. })
    ));
}

#[test]
fn replayed_jti_refused_until_the_token_is_dead() {
    let k = ed(1);
    let keys = Keys::with(&k);
    let v = verifier();
    let t = mint_eddsa(&k, AUD, NOW, 120);
    v.verify(&t, AUD, NOW, &keys).unwrap();
    assert_eq!(v.verify(&t, AUD, NOW + 1, &keys), Err(AuthError::Replayed));
    assert_eq!(
        v.verify(&t, AUD, NOW + 179, &keys),
        Err(AuthError::Replayed)
    );
    // At exp + skew the token is expired, and its jti is then forgotten.
    assert!(matches!(
        v.verify(&t, AUD, NOW + 180, &keys),
        Err(AuthError::Expired { .. })
    ));
    let fresh = mint_eddsa(&k, AUD, NOW + 180, 60);
    v.verify(&fresh, AUD, NOW + 180, &keys).unwrap();
    assert_eq!(v.cached_jtis(), 1);
    // The same jti in a different token of the same participant is a replay too.
    let c = claims(&k);
    let a = forge(&header(&k), &c, &k);
    let mut c2 = c.clone();
    c2["exp"] = json!(NOW + 200);
    let b = forge(&header(&k), &c2, &k);
    v.verify(&a, AUD, NOW, &keys).unwrap();
    assert_eq!(v.verify(&b, AUD, NOW, &keys), Err(AuthError::Replayed));
    // A forged token does not burn a jti.
    let v = verifier();
    let (input, _) = a.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    assert!(matches!(
        v.verify(&forged, AUD, NOW, &keys),
        Err(AuthError::BadSignature { .. })
    ));
    assert_eq!(v.cached_jtis(), 0);
    v.verify(&a, AUD, NOW, &keys).unwrap();
}

#[test]
fn full_replay_cache_refuses_new_tokens() {
    let k = ed(1);
    let keys = Keys::with(&k);
    let v = Verifier::new(AuthConfig {
        max_jti_cache: 2,
        ..AuthConfig::default()
    });
    let t1 = mint_eddsa(&k, AUD, NOW, 60);
    v.verify(&t1, AUD, NOW, &keys).unwrap();
    v.verify(&mint_eddsa(&k, AUD, NOW, 100), AUD, NOW, &keys)
        .unwrap();
    let t3 = mint_eddsa(&k, AUD, NOW, 60);
    assert_eq!(
        v.verify(&t3, AUD, NOW, &keys),
        Err(AuthError::ReplayCacheFull)
    );
    // Live jtis are not forgotten to make room.
    assert_eq!(v.verify(&t1, AUD, NOW, &keys), Err(AuthError::Replayed));
    // Once the first token is dead (exp + skew = NOW + 120) there is room again.
    v.verify(&mint_eddsa(&k, AUD, NOW + 120, 60), AUD, NOW + 120, &keys)
        .unwrap();
}

#[test]
fn rotated_and_revoked_keys_no_longer_authenticate() {
    let k = ed(1);
    let me = id_of(&k);
    let new = ed(9);
    let mut keys = Keys::default();
    // The participant's id stays, its current key is the new one.
    keys.ed.insert(me, new.verifying_key().to_bytes());
    let old_token = mint_eddsa(&k, AUD, NOW, 60);
    assert_eq!(
        err(&old_token, &keys),
        AuthError::BadSignature { alg: "EdDSA" }
    );
    // A token signed with the new key but naming the old id as kid verifies.
    let mut h = header(&k);
    h["kid"] = json!(me.to_string());
    let t = forge(&h, &claims(&k), &new);
    verifier().verify(&t, AUD, NOW, &keys).unwrap();
    // RS384: a token under key A fails once only key B is registered.
    keys.register(me, AuthAlg::Rs384, rs384_public_key_der(RSA_B).unwrap());
    let t = mint_rs384(RSA_A, &me, AUD, NOW, 60).unwrap();
    assert_eq!(err(&t, &keys), AuthError::BadSignature { alg: "RS384" });
    let t = mint_rs384(RSA_B, &me, AUD, NOW, 60).unwrap();
    verifier().verify(&t, AUD, NOW, &keys).unwrap();
}

fn genesis(members: &[(&SigningKey, Role, &str)]) -> Genesis {
    Genesis {
        chain_id: AUD.into(),
        participants: members
            .iter()
            .map(|(k, role, label)| GenesisParticipant {
                key: k.verifying_key().to_bytes(),
                role: *role,
                label: (*label).into(),
                attributes: vec![],
            })
            .collect(),
    }
}

#[test]
fn verifies_against_the_ledger_state() {
    let validator = ed(1);
    let authority = ed(2);
    let researcher = ed(3);
    let me = id_of(&researcher);
    let mut state = LedgerState::from_genesis(&genesis(&[
        (&validator, Role::Validator, "node-0"),
        (&authority, Role::AttributeAuthority, "aa"),
        (&researcher, Role::Researcher, "r-1"),
    ]))
    .unwrap();
    let mut height = 0;
    let mut nonce = 0;
    let mut apply = |state: &mut LedgerState, kind: TxKind, signer: &SigningKey| {
        height += 1;
        nonce += 1;
        let tx = TxBody::new(AUD, me, nonce, kind).sign(signer).to_bytes();
        let (out, _) = state.apply_block(height, &[tx]);
        assert_eq!(out, vec![TxOutcome::Applied]);
    };
    let ec = p384_pkcs8();
    let der = es384_public_key_der(&ec).unwrap();
    let v = verifier();
    let t = mint_es384(&ec, &me, AUD, NOW, 60).unwrap();
    assert_eq!(
        v.verify(&t, AUD, NOW, &state),
        Err(AuthError::UnknownKeyId { alg: "ES384" })
    );
    apply(
        &mut state,
        TxKind::RegisterAuthKey {
            alg: ehr_ledger::tx::AuthAlg::Es384,
            public_key_der: der.clone(),
        },
        &researcher,
    );
    let p = v.verify(&t, AUD, NOW, &state).unwrap();
    assert_eq!((p.participant, p.alg), (me, AuthAlg::Es384));
    v.verify(&mint_eddsa(&researcher, AUD, NOW, 60), AUD, NOW, &state)
        .unwrap();
    // Revoking the ES384 key and rotating the Ed25519 key end both.
    apply(
        &mut state,
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&der),
        },
        &researcher,
    );
    let rotated = ed(30);
    apply(
        &mut state,
        TxKind::RotateKey {
            new_key: rotated.verifying_key().to_bytes(),
        },
        &researcher,
    );
    let t = mint_es384(&ec, &me, AUD, NOW, 60).unwrap();
    assert_eq!(
        v.verify(&t, AUD, NOW, &state),
        Err(AuthError::UnknownKeyId { alg: "ES384" })
    );
    let t = mint_eddsa(&researcher, AUD, NOW, 60);
    assert_eq!(
        v.verify(&t, AUD, NOW, &state),
        Err(AuthError::BadSignature { alg: "EdDSA" })
    );
}

#[test]
fn errors_never_echo_the_token() {
    let k = ed(1);
    let keys = Keys::with(&k);
    let secretish = "SECRETSECRETSECRETSECRET";
    let cases = [
        forge(&header(&k), &claims_with(&k, "jti", json!(secretish)), &k),
        forge(&header(&k), &claims_with(&k, "iat", json!(secretish)), &k),
        forge(&header(&k), &claims_with(&k, "aud", json!(secretish)), &k),
        forge(&header_with(&k, "alg", json!(secretish)), &claims(&k), &k),
        forge(&header_with(&k, "kid", json!(secretish)), &claims(&k), &k),
        forge_raw(&format!("{{\"alg\": {secretish}}}"), "{}", &k),
    ];
    for t in cases {
        let v = verifier();
        let e = v.verify(&t, AUD, NOW, &keys);
        let msg = match e {
            Ok(_) => String::new(),
            Err(e) => format!("{e} {e:?}"),
        };
        assert!(!msg.contains("SECRET"), "{msg}");
        assert!(!msg.contains(&t[..20]), "{msg}");
    }
}

#[test]
fn config_validation() {
    AuthConfig::default().validate().unwrap();
    for cfg in [
        AuthConfig {
            max_ttl_secs: 0,
            ..AuthConfig::default()
        },
        AuthConfig {
            skew_secs: 601,
            ..AuthConfig::default()
        },
        AuthConfig {
            max_jti_cache: 0,
            ..AuthConfig::default()
        },
    ] {
        assert!(matches!(
            cfg.validate(),
            Err(AuthError::InvalidConfig { .. })
        ));
    }
}

fn mutation_fails(token: &str, keys: &Keys, idx: usize, val: u8) -> Result<(), TestCaseError> {
    // The original verifies (with its own verifier, so the mutation is not judged a replay).
    verifier().verify(token, AUD, NOW, keys).unwrap();
    let mut bytes = token.as_bytes().to_vec();
    let i = idx % bytes.len();
    prop_assume!(bytes[i] != val);
    bytes[i] = val;
    let mutated = String::from_utf8_lossy(&bytes);
    prop_assert!(verifier().verify(&mutated, AUD, NOW, keys).is_err());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Changing any byte of a valid EdDSA token makes it fail.
    #[test]
    fn mutating_any_byte_of_an_eddsa_token_fails(idx in 0usize..1000, val in any::<u8>()) {
        let k = ed(1);
        let keys = Keys::with(&k);
        mutation_fails(&mint_eddsa(&k, AUD, NOW, 60), &keys, idx, val)?;
    }

    /// Arbitrary strings never panic the verifier.
    #[test]
    fn arbitrary_tokens_never_panic(s in "[A-Za-z0-9_.=-]{0,300}") {
        let k = ed(1);
        let keys = Keys::with(&k);
        prop_assert!(verifier().verify(&s, AUD, NOW, &keys).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Changing any byte of a valid ES384 or RS384 token makes it fail.
    #[test]
    fn mutating_any_byte_of_an_es384_or_rs384_token_fails(
        idx in 0usize..2000, val in any::<u8>(), rsa in any::<bool>()
    ) {
        let k = ed(1);
        let me = id_of(&k);
        let mut keys = Keys::with(&k);
        let token = if rsa {
            keys.register(me, AuthAlg::Rs384, rs384_public_key_der(RSA_A).unwrap());
            mint_rs384(RSA_A, &me, AUD, NOW, 60).unwrap()
        } else {
            let ec = p384_pkcs8();
            keys.register(me, AuthAlg::Es384, es384_public_key_der(&ec).unwrap());
            mint_es384(&ec, &me, AUD, NOW, 60).unwrap()
        };
        mutation_fails(&token, &keys, idx, val)?;
    }
}
