//! Fixed-base scalar multiplication with precomputed window tables for the points every
//! operation multiplies: `h` (G2), `g` and `H(b)` (G1). Built once per process on first use
//! (window 7: about 1 MB for `h`, 0.5 MB for each G1 base), they make these multiplications
//! several times cheaper than variable-base ones (arkworks has no GLV for BLS12-381 G2).
//!
//! Like the rest of arkworks these are not constant-time (table lookups depend on the scalar).

use std::sync::OnceLock;

use ark_bls12_381::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::AffineRepr;
use ark_ec::scalar_mul::BatchMulPreprocessing;
use ark_ff::{BigInteger, PrimeField, Zero};

use super::hash;

/// `num_scalars` for which arkworks picks window 7 (`log2(n) * 0.69`).
const TABLE_SIZE_HINT: usize = 2048;

fn h_table() -> &'static BatchMulPreprocessing<G2Projective> {
    static T: OnceLock<BatchMulPreprocessing<G2Projective>> = OnceLock::new();
    T.get_or_init(|| {
        BatchMulPreprocessing::new(G2Affine::generator().into_group(), TABLE_SIZE_HINT)
    })
}

fn g_table() -> &'static BatchMulPreprocessing<G1Projective> {
    static T: OnceLock<BatchMulPreprocessing<G1Projective>> = OnceLock::new();
    T.get_or_init(|| {
        BatchMulPreprocessing::new(G1Affine::generator().into_group(), TABLE_SIZE_HINT)
    })
}

fn b_table() -> &'static BatchMulPreprocessing<G1Projective> {
    static T: OnceLock<BatchMulPreprocessing<G1Projective>> = OnceLock::new();
    T.get_or_init(|| BatchMulPreprocessing::new(hash::b_point().into_group(), TABLE_SIZE_HINT))
}

/// `h^s`.
pub(crate) fn h_mul(s: &Fr) -> G2Affine {
    h_table().batch_mul(std::slice::from_ref(s))[0]
}

/// `h^s` in projective coordinates (no normalisation), for comparisons.
pub(crate) fn h_mul_projective(s: &Fr) -> G2Projective {
    let t = h_table();
    let bits = s.into_bigint();
    let mut acc = G2Projective::zero();
    for (outer, row) in t.table.iter().enumerate() {
        let mut inner = 0usize;
        for i in 0..t.window {
            let bit = outer * t.window + i;
            if bit < t.max_scalar_size && bits.get_bit(bit) {
                inner |= 1 << i;
            }
        }
        acc += &row[inner];
    }
    acc
}

/// `h^{s_k}` for each scalar (one shared inversion).
pub(crate) fn h_mul_many(s: &[Fr]) -> Vec<G2Affine> {
    h_table().batch_mul(s)
}

/// `g^s`.
pub(crate) fn g_mul(s: &Fr) -> G1Affine {
    g_table().batch_mul(std::slice::from_ref(s))[0]
}

/// `H(b)^s`.
pub(crate) fn b_mul(s: &Fr) -> G1Affine {
    b_table().batch_mul(std::slice::from_ref(s))[0]
}

/// `H(b)^{s_k}` for each scalar (one shared inversion).
pub(crate) fn b_mul_many(s: &[Fr]) -> Vec<G1Affine> {
    b_table().batch_mul(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_ec::CurveGroup;
    use ark_ff::UniformRand;
    use rand::SeedableRng;

    #[test]
    fn tables_agree_with_plain_multiplication() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut scalars: Vec<Fr> = (0..4).map(|_| Fr::rand(&mut rng)).collect();
        scalars.push(Fr::from(0u64));
        scalars.push(-Fr::from(1u64));
        for s in &scalars {
            assert_eq!(h_mul(s), (G2Affine::generator() * s).into_affine());
            assert_eq!(h_mul_projective(s), G2Affine::generator() * s);
            assert_eq!(g_mul(s), (G1Affine::generator() * s).into_affine());
            assert_eq!(b_mul(s), (hash::b_point() * s).into_affine());
        }
        let many = h_mul_many(&scalars);
        let each: Vec<G2Affine> = scalars.iter().map(h_mul).collect();
        assert_eq!(many, each);
        assert_eq!(b_mul_many(&scalars)[1], b_mul(&scalars[1]));
    }
}
