//! Decoding random, truncated or bit-flipped bytes is an error, never a panic.

use ehr_search::abe::{
    self, MasterKey, MasterKeyShare, PartialKey, PublicParams, UserKey, WrappedKey,
};
use ehr_search::policy::Policy;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn decode_all(bytes: &[u8]) -> usize {
    [
        PublicParams::from_bytes(bytes).is_ok(),
        MasterKey::from_bytes(bytes).is_ok(),
        MasterKeyShare::from_bytes(bytes).is_ok(),
        UserKey::from_bytes(bytes).is_ok(),
        PartialKey::from_bytes(bytes).is_ok(),
        WrappedKey::from_bytes(bytes).is_ok(),
    ]
    .iter()
    .filter(|ok| **ok)
    .count()
}

fn samples() -> &'static [Vec<u8>] {
    static SAMPLES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(make_samples)
}

fn make_samples() -> Vec<Vec<u8>> {
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    let (pp, shares) = abe::setup_dealer(3, 2, &mut rng).unwrap();
    let (_, msk) = abe::setup(&mut rng);
    let partial = shares[0]
        .issue_partial(&pp, b"u", ["a:1", "b:2"], &mut rng)
        .unwrap();
    let key = abe::combine(
        &pp,
        b"u",
        ["a:1", "b:2"],
        &[
            partial.clone(),
            shares[1]
                .issue_partial(&pp, b"u", ["a:1", "b:2"], &mut rng)
                .unwrap(),
        ],
    )
    .unwrap();
    let policy = Policy::parse("a:1 and 2 of (b:2, c:3, a:1)").unwrap();
    let wk = abe::wrap(&pp, &policy, b"secret", b"", &mut rng).unwrap();
    vec![
        pp.to_bytes(),
        msk.to_bytes().to_vec(),
        shares[0].to_bytes().to_vec(),
        key.to_bytes().to_vec(),
        partial.to_bytes().to_vec(),
        wk.to_bytes(),
    ]
}

#[test]
fn every_truncation_is_rejected() {
    for s in samples().iter() {
        assert_eq!(decode_all(s), 1, "the sample decodes as exactly one kind");
        // Every cut in the headers, then a stride through the points (each cut re-validates the
        // points before it, which makes every single cut slow in a debug build).
        let cuts = (0..64.min(s.len()))
            .chain((64..s.len()).step_by(29))
            .chain([s.len() - 1]);
        for cut in cuts {
            assert_eq!(decode_all(&s[..cut]), 0, "truncation at {cut} decoded");
        }
        let mut longer = s.clone();
        longer.push(0);
        assert_eq!(decode_all(&longer), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), kind in 1u8..7) {
        let mut b = bytes;
        if b.len() >= 2 {
            b[0] = kind;
            b[1] = 1;
        }
        let _ = decode_all(&b);
    }

    #[test]
    fn bit_flips_never_panic(which in 0usize..6, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let s = &samples()[which];
        let mut b = s.clone();
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        let _ = decode_all(&b);
    }
}
