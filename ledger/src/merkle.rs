//! Merkle tree over a block's transactions, with inclusion proofs.
//!
//! SHA3-256 with domain separation: a leaf is `H(0x00 || tx)`, an inner node
//! `H(0x01 || left || right)`, and the empty tree is `H(0x02)`. The tree shape is RFC 6962's: the
//! left subtree of `n` leaves holds the largest power of two strictly below `n`, so a proof is at
//! most `ceil(log2 n)` hashes and the root of a one-leaf tree is that leaf's hash. Because leaves
//! and inner nodes hash under different prefixes, an inner node can never be passed off as a
//! transaction.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::app::Hash;

/// The deepest proof accepted (trees hold far fewer than 2^64 leaves).
pub const MAX_PROOF_DEPTH: usize = 64;

/// The hash of a transaction as a leaf.
pub fn leaf_hash(tx: &[u8]) -> Hash {
    let mut h = Sha3_256::new();
    h.update([0x00]);
    h.update(tx);
    h.finalize().into()
}

/// The hash of an inner node.
pub fn inner_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha3_256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    Sha3_256::digest([0x02]).into()
}

fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    let mut k = 1usize;
    // k * 2 < n, written so that it cannot overflow for hostile leaf counts.
    while k <= (n - 1) / 2 {
        k *= 2;
    }
    k
}

/// The Merkle root of the transactions, in order.
pub fn root<T: AsRef<[u8]>>(txs: &[T]) -> Hash {
    MerkleTree::new(txs).root()
}

/// Proof that one transaction sits at `index` among `leaf_count` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    /// Position of the transaction in the block.
    pub index: u64,
    /// Number of transactions in the block.
    pub leaf_count: u64,
    /// Sibling hashes from the leaf up to the root.
    pub siblings: Vec<Hash>,
}

/// A whole tree, built once, for proving many of its transactions (each proof reads
/// `ceil(log2 n)` stored hashes instead of rehashing the block).
///
/// Built bottom-up: each level pairs neighbours and promotes an unpaired last node unchanged.
/// That is the same tree as RFC 6962's top-down definition (the left subtree holds the largest
/// power of two below `n`); the tests check roots and proofs against that definition.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[0]` are the leaf hashes, the last level is the root (empty for no leaves).
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// The tree of the transactions, in order.
    pub fn new<T: AsRef<[u8]>>(txs: &[T]) -> Self {
        let mut levels = vec![
            txs.iter()
                .map(|t| leaf_hash(t.as_ref()))
                .collect::<Vec<_>>(),
        ];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next = last
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => inner_hash(l, r),
                    [one] => *one,
                    _ => unreachable!("invariant: chunks(2) yields one or two"),
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The root (equal to [`root`] of the same transactions).
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|l| l.first()) {
            Some(r) => *r,
            None => empty_root(),
        }
    }

    /// The inclusion proof of the leaf at `index`, or `None` if `index` is out of range.
    pub fn prove(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = if i % 2 == 1 {
                Some(level[i - 1])
            } else {
                level.get(i + 1).copied()
            };
            // No sibling: the node is promoted to the next level unchanged.
            siblings.extend(sibling);
            i /= 2;
        }
        Some(MerkleProof {
            index: index as u64,
            leaf_count: self.len() as u64,
            siblings,
        })
    }
}

/// The inclusion proof of `txs[index]`, or `None` if `index` is out of range. To prove many
/// transactions of one block, build a [`MerkleTree`] once.
pub fn prove<T: AsRef<[u8]>>(txs: &[T], index: usize) -> Option<MerkleProof> {
    MerkleTree::new(txs).prove(index)
}

/// Recomputes the root from a leaf hash and a proof; `None` if the proof's shape is wrong.
fn fold(leaf: Hash, index: u64, count: u64, siblings: &[Hash]) -> Option<Hash> {
    if count == 0 || index >= count {
        return None;
    }
    if count == 1 {
        return siblings.is_empty().then_some(leaf);
    }
    let (last, rest) = siblings.split_last()?;
    let k = split(usize::try_from(count).ok()?) as u64;
    if index < k {
        let left = fold(leaf, index, k, rest)?;
        Some(inner_hash(&left, last))
    } else {
        let right = fold(leaf, index - k, count - k, rest)?;
        Some(inner_hash(last, &right))
    }
}

impl MerkleProof {
    /// Whether this proof shows `tx` under `root`.
    pub fn verify(&self, root: &Hash, tx: &[u8]) -> bool {
        if self.siblings.len() > MAX_PROOF_DEPTH {
            return false;
        }
        match fold(leaf_hash(tx), self.index, self.leaf_count, &self.siblings) {
            Some(r) => r == *root,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txs(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("tx-{i}").into_bytes()).collect()
    }

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for n in 1..=33 {
            let t = txs(n);
            let r = root(&t);
            for i in 0..n {
                let p = prove(&t, i).unwrap();
                assert!(p.verify(&r, &t[i]), "n={n} i={i}");
                assert!(!p.verify(&r, b"other"), "n={n} i={i}");
                let mut moved = p.clone();
                moved.index = ((i + 1) % n) as u64;
                if n > 1 {
                    assert!(!moved.verify(&r, &t[i]), "n={n} i={i} moved");
                }
                let mut short = p.clone();
                short.siblings.pop();
                if n > 1 {
                    assert!(!short.verify(&r, &t[i]));
                }
            }
            assert!(prove(&t, n).is_none());
        }
    }

    /// RFC 6962's tree head, straight from its definition.
    fn root_of(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n);
                inner_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
            }
        }
    }

    /// RFC 6962's top-down audit path, straight from its definition.
    fn reference_path(leaves: &[Hash], index: usize, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if n <= 1 {
            return;
        }
        let k = split(n);
        if index < k {
            reference_path(&leaves[..k], index, out);
            out.push(root_of(&leaves[k..]));
        } else {
            reference_path(&leaves[k..], index - k, out);
            out.push(root_of(&leaves[..k]));
        }
    }

    #[test]
    fn the_bottom_up_tree_is_rfc_6962s() {
        for n in 0..=70 {
            let t = txs(n);
            let tree = MerkleTree::new(&t);
            let leaves: Vec<Hash> = t.iter().map(|x| leaf_hash(x)).collect();
            assert_eq!(tree.root(), root_of(&leaves), "n={n}");
            assert_eq!(root(&t), root_of(&leaves), "n={n}");
            assert_eq!(tree.len(), n);
            for i in 0..n {
                let mut want = Vec::new();
                reference_path(&leaves, i, &mut want);
                assert_eq!(tree.prove(i).unwrap().siblings, want, "n={n} i={i}");
            }
            assert!(tree.prove(n).is_none());
        }
    }

    #[test]
    fn domain_separation() {
        let t = txs(2);
        let r = root(&t);
        // An inner node presented as a leaf must not verify.
        let mut forged = Vec::new();
        forged.extend_from_slice(&leaf_hash(&t[0]));
        forged.extend_from_slice(&leaf_hash(&t[1]));
        let p = MerkleProof {
            index: 0,
            leaf_count: 1,
            siblings: vec![],
        };
        assert!(!p.verify(&r, &forged));
        assert_ne!(root::<Vec<u8>>(&[]), root(&[Vec::<u8>::new()]));
    }

    #[test]
    fn garbage_proof_shapes_are_rejected() {
        let t = txs(5);
        let r = root(&t);
        let p = MerkleProof {
            index: 9,
            leaf_count: 5,
            siblings: vec![[0; 32]; 3],
        };
        assert!(!p.verify(&r, &t[0]));
        let p = MerkleProof {
            index: 0,
            leaf_count: 0,
            siblings: vec![],
        };
        assert!(!p.verify(&r, &t[0]));
        let p = MerkleProof {
            index: 0,
            leaf_count: u64::MAX,
            siblings: vec![[0; 32]; 100],
        };
        assert!(!p.verify(&r, &t[0]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn proofs_verify_and_bind_content(n in 1usize..80, pick in any::<usize>(), flip in any::<usize>()) {
            let t = txs(n);
            let r = root(&t);
            let i = pick % n;
            let p = prove(&t, i).unwrap();
            prop_assert!(p.verify(&r, &t[i]));
            let mut tx = t[i].clone();
            let j = flip % tx.len();
            tx[j] ^= 0x40;
            prop_assert!(!p.verify(&r, &tx));
        }
    }
}
