//! Byte-level helpers for the versioned encodings (see `search/CRYPTO.md`, "Encodings").
//!
//! Every object starts with a kind byte and a version byte. Integers are big-endian. Points are
//! compressed (ZCash/IETF format: G1 48 bytes, G2 96 bytes), GT elements 576 bytes, scalars
//! 32 bytes little-endian (arkworks canonical). Decoding checks lengths, that points are on the
//! curve and in the prime-order subgroup and not the identity, that scalars are canonical, and
//! that no bytes trail.

use ark_bls12_381::{Fr, G1Affine, G2Affine};
use ark_ec::AffineRepr;
use ark_ff::Zero;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};

use super::Gt;
use crate::error::AbeError;

/// Encoding version written and read by this implementation.
pub(crate) const VERSION: u8 = 1;

/// Kind bytes of the encoded objects.
pub(crate) mod kind {
    pub(crate) const PUBLIC_PARAMS: u8 = 0x01;
    pub(crate) const MASTER_KEY_SHARE: u8 = 0x02;
    pub(crate) const USER_KEY: u8 = 0x03;
    pub(crate) const PARTIAL_KEY: u8 = 0x04;
    pub(crate) const WRAPPED_KEY: u8 = 0x05;
    pub(crate) const MASTER_KEY: u8 = 0x06;
}

pub(crate) const G1_LEN: usize = 48;
pub(crate) const G2_LEN: usize = 96;
pub(crate) const FR_LEN: usize = 32;

pub(crate) fn gt_len() -> usize {
    Gt::zero().compressed_size()
}

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(kind: u8) -> Self {
        Writer {
            buf: vec![kind, VERSION],
        }
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// A u16 length then the bytes. Callers keep lengths below 65,536 (their own limits).
    pub(crate) fn bytes16(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).expect("encoding invariant: field shorter than 64 KiB");
        self.u16(len);
        self.raw(b);
    }
    pub(crate) fn point<P: CanonicalSerialize>(&mut self, p: &P) {
        p.serialize_compressed(&mut self.buf)
            .expect("encoding invariant: writing to a Vec cannot fail");
    }
}

/// Reads encoded fields, naming the object and field in every error.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the kind and version bytes.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str, kind: u8) -> Result<Self, AbeError> {
        let [k, v, rest @ ..] = bytes else {
            return Err(AbeError::Decode {
                what,
                field: "header",
                reason: "shorter than the 2-byte kind and version header",
            });
        };
        if *k != kind || *v != VERSION {
            return Err(AbeError::UnsupportedVersion {
                what,
                kind: *k,
                version: *v,
            });
        }
        Ok(Reader { rest, what })
    }

    fn err(&self, field: &'static str, reason: &'static str) -> AbeError {
        AbeError::Decode {
            what: self.what,
            field,
            reason,
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], AbeError> {
        if self.rest.len() < n {
            return Err(self.err(field, "truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, AbeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, AbeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], AbeError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    pub(crate) fn array32(&mut self, field: &'static str) -> Result<[u8; 32], AbeError> {
        let b = self.take(32, field)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn g1(&mut self, field: &'static str) -> Result<G1Affine, AbeError> {
        let b = self.take(G1_LEN, field)?;
        let p = G1Affine::deserialize_compressed(b)
            .map_err(|_| self.err(field, "not a valid G1 point in the prime-order subgroup"))?;
        if p.is_zero() {
            return Err(self.err(field, "the identity point is not allowed"));
        }
        Ok(p)
    }

    pub(crate) fn g2(&mut self, field: &'static str) -> Result<G2Affine, AbeError> {
        let b = self.take(G2_LEN, field)?;
        let p = G2Affine::deserialize_compressed(b)
            .map_err(|_| self.err(field, "not a valid G2 point in the prime-order subgroup"))?;
        if p.is_zero() {
            return Err(self.err(field, "the identity point is not allowed"));
        }
        Ok(p)
    }

    pub(crate) fn gt(&mut self, field: &'static str) -> Result<Gt, AbeError> {
        let b = self.take(gt_len(), field)?;
        let p = Gt::deserialize_compressed(b)
            .map_err(|_| self.err(field, "not a valid GT element of prime order"))?;
        if p.is_zero() {
            return Err(self.err(field, "the identity element is not allowed"));
        }
        Ok(p)
    }

    pub(crate) fn fr(&mut self, field: &'static str) -> Result<Fr, AbeError> {
        let b = self.take(FR_LEN, field)?;
        let s = Fr::deserialize_compressed(b).map_err(|_| {
            self.err(
                field,
                "not a canonical scalar (must be below the group order)",
            )
        })?;
        if s.is_zero() {
            return Err(self.err(field, "zero is not allowed"));
        }
        Ok(s)
    }

    /// Fails if bytes remain.
    pub(crate) fn finish(self) -> Result<(), AbeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.err("end", "trailing bytes after the last field"))
        }
    }
}
