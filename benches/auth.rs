//! Cost of request authentication and of grant key rewrapping.
//!
//! - `verify/<alg>`: one [`Verifier::verify`] of a fresh client assertion (parsing, claim
//!   checks, signature, replay-cache insert), per algorithm (RSA at 2048 and 4096 bits);
//! - `mint/<alg>`: minting one assertion (what a client pays per request);
//! - `keywrap/wrap`, `keywrap/unwrap`: rewrapping a 32-byte data key for a grantee.
//!
//! Run: `cargo bench -p ehr --bench auth` (release profile).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ehr::auth::{
    AuthAlg, AuthConfig, KeyLookup, Verifier, es384_public_key_der, mint_eddsa, mint_es384,
    mint_rs384, rs384_public_key_der,
};
use ehr::keywrap::{unwrap_with, wrap_for};
use ehr_ledger::tx::ParticipantId;
use rand_core::OsRng;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};

const AUD: &str = "ehr-bench";
const NOW: u64 = 1_800_000_000;
const RSA_2048: &[u8] = include_bytes!("../src/auth/testdata/rsa2048-a.pk8");
const RSA_4096: &[u8] = include_bytes!("../src/auth/testdata/rsa4096.pk8");

/// One participant with an Ed25519 key and registered ES384 and RS384 keys.
struct Keys {
    id: ParticipantId,
    ed: [u8; 32],
    es: Vec<Vec<u8>>,
    rs: Vec<Vec<u8>>,
}

impl KeyLookup for Keys {
    fn ed25519(&self, id: &ParticipantId) -> Option<[u8; 32]> {
        (*id == self.id).then_some(self.ed)
    }

    fn registered(&self, id: &ParticipantId, alg: AuthAlg) -> Vec<Vec<u8>> {
        match (*id == self.id, alg) {
            (true, AuthAlg::Es384) => self.es.clone(),
            (true, AuthAlg::Rs384) => self.rs.clone(),
            _ => Vec::new(),
        }
    }
}

fn bench(c: &mut Criterion) {
    let ed = SigningKey::from_bytes(&[7; 32]);
    let id = ParticipantId(ed.verifying_key().to_bytes());
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
        .expect("P-384 key generation")
        .as_ref()
        .to_vec();
    let keys = Keys {
        id,
        ed: id.0,
        es: vec![es384_public_key_der(&ec).expect("P-384 SPKI")],
        rs: vec![
            rs384_public_key_der(RSA_2048).expect("RSA SPKI"),
            rs384_public_key_der(RSA_4096).expect("RSA SPKI"),
        ],
    };
    type Mint<'a> = Box<dyn Fn() -> String + 'a>;
    let cases: Vec<(&str, Mint<'_>)> = vec![
        ("EdDSA", Box::new(|| mint_eddsa(&ed, AUD, NOW, 300))),
        (
            "ES384",
            Box::new(|| mint_es384(&ec, &id, AUD, NOW, 300).expect("mint")),
        ),
        (
            "RS384-2048",
            Box::new(|| mint_rs384(RSA_2048, &id, AUD, NOW, 300).expect("mint")),
        ),
        (
            "RS384-4096",
            Box::new(|| mint_rs384(RSA_4096, &id, AUD, NOW, 300).expect("mint")),
        ),
    ];

    let mut g = c.benchmark_group("verify");
    for (name, mint) in &cases {
        // Each iteration verifies a token never seen before (a replay would be refused).
        g.bench_function(*name, |b| {
            let v = Verifier::new(AuthConfig::default());
            b.iter_batched(
                mint,
                |t| v.verify(&t, AUD, NOW, &keys).expect("valid token"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("mint");
    for (name, mint) in &cases {
        g.bench_function(*name, |b| b.iter(|| black_box(mint())));
    }
    g.finish();

    let grantee = SigningKey::from_bytes(&[9; 32]);
    let grantee_pub = grantee.verifying_key().to_bytes();
    let cid = b"\x01\x55\x12\x20 a CID of about forty bytes ....";
    let data_key = [0x42u8; 32];
    let wrapped = wrap_for(&grantee_pub, cid, &data_key, &mut OsRng).expect("wrap");
    let mut g = c.benchmark_group("keywrap");
    g.bench_function("wrap", |b| {
        b.iter(|| wrap_for(black_box(&grantee_pub), cid, &data_key, &mut OsRng).expect("wrap"))
    });
    g.bench_function("unwrap", |b| {
        b.iter(|| unwrap_with(&grantee, cid, black_box(&wrapped)).expect("unwrap"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
