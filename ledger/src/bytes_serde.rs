//! Serde helpers for lists of transactions: each one is written as a byte string
//! (`serialize_bytes`) instead of a sequence of `u8`s. In postcard both are a varint length
//! followed by the bytes, so the encoding is unchanged (the committed fuzz corpus checks it);
//! decoding copies each transaction at once instead of visiting it byte by byte, which was
//! several per cent of a replica's CPU time.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::{ByteBuf, Bytes};

/// `#[serde(with = "crate::bytes_serde::txs")]` for `Vec<Vec<u8>>`.
pub mod txs {
    use super::*;

    /// Serializes each transaction as a byte string.
    pub fn serialize<S: Serializer>(txs: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(txs.iter().map(|t| Bytes::new(t)))
    }

    /// Deserializes a list of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// `#[serde(with = "crate::bytes_serde::opt_txs")]` for `Option<Vec<Vec<u8>>>`.
pub mod opt_txs {
    use super::*;

    #[derive(Serialize)]
    struct Ref<'a>(#[serde(with = "super::txs")] &'a Vec<Vec<u8>>);

    #[derive(Deserialize)]
    struct Own(#[serde(with = "super::txs")] Vec<Vec<u8>>);

    /// Serializes the list, if any, as [`super::txs`] does.
    pub fn serialize<S: Serializer>(txs: &Option<Vec<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
        match txs {
            Some(t) => s.serialize_some(&Ref(t)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes an optional list of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<u8>>>, D::Error> {
        let v: Option<Own> = Deserialize::deserialize(d)?;
        Ok(v.map(|o| o.0))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        txs: Vec<Vec<u8>>,
        opt: Option<Vec<Vec<u8>>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast {
        #[serde(with = "super::txs")]
        txs: Vec<Vec<u8>>,
        #[serde(with = "super::opt_txs")]
        opt: Option<Vec<Vec<u8>>>,
    }

    #[test]
    fn same_bytes_as_plain_vectors() {
        let cases = [
            (vec![], None),
            (vec![vec![]], Some(vec![])),
            (
                vec![vec![1, 2, 3], vec![0; 300]],
                Some(vec![vec![9; 200], vec![]]),
            ),
        ];
        for (txs, opt) in cases {
            let plain = postcard::to_stdvec(&Plain {
                txs: txs.clone(),
                opt: opt.clone(),
            })
            .unwrap();
            let fast = Fast { txs, opt };
            assert_eq!(postcard::to_stdvec(&fast).unwrap(), plain);
            assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap(), fast);
        }
    }
}
