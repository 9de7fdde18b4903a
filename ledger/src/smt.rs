//! A sparse Merkle tree over 256-bit keys with SHA3-256, shortcut leaves and lazy rehashing.
//!
//! # Hashing (version 1)
//!
//! ```text
//! empty subtree  = [0; 32]
//! leaf           = SHA3-256(0x00 || key || SHA3-256(value))
//! internal node  = SHA3-256(0x01 || left || right)
//! ```
//!
//! A subtree holding exactly one leaf is represented by that leaf, at the shallowest depth
//! where it is alone (as in Diem's Jellyfish tree), so the shape, and therefore the root, is a
//! function of the set of (key, value) pairs only, not of the order of updates. Lookups and
//! updates walk about log2(n) nodes; updates only mark the path dirty and [`Smt::commit`]
//! rehashes the dirty nodes once per block.
//!
//! **Invariants:** an `Internal` node has at least two leaves below it; after `commit` no
//! node is dirty (proofs and roots are only read from a committed tree).

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::app::Hash;
use crate::error::StateError;

/// The root of the empty tree.
pub const EMPTY_ROOT: Hash = [0u8; 32];

fn bit(key: &Hash, depth: usize) -> bool {
    (key[depth / 8] >> (7 - depth % 8)) & 1 == 1
}

/// SHA3-256 of a leaf's value.
pub fn value_hash(value: &[u8]) -> Hash {
    Sha3_256::digest(value).into()
}

fn leaf_hash(key: &Hash, vh: &Hash) -> Hash {
    let mut h = Sha3_256::new();
    h.update([0x00]);
    h.update(key);
    h.update(vh);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha3_256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

#[derive(Debug, Clone)]
enum Node {
    Empty,
    Leaf { key: Hash, hash: Hash },
    Internal(Box<Internal>),
}

#[derive(Debug, Clone)]
struct Internal {
    left: Node,
    right: Node,
    hash: Hash,
    dirty: bool,
}

impl Node {
    fn hash(&self) -> Hash {
        match self {
            Node::Empty => EMPTY_ROOT,
            Node::Leaf { hash, .. } => *hash,
            Node::Internal(i) => {
                assert!(!i.dirty, "invariant: hash read from an uncommitted tree");
                i.hash
            }
        }
    }

    fn leaf(key: Hash, vh: &Hash) -> Node {
        Node::Leaf {
            key,
            hash: leaf_hash(&key, vh),
        }
    }

    /// Builds the subtree holding two leaves with different keys, starting at `depth`.
    fn split(a: Node, a_key: Hash, b: Node, b_key: Hash, depth: usize) -> Node {
        assert!(
            depth < 256,
            "invariant: two distinct keys differ in some bit"
        );
        let (left, right) = match (bit(&a_key, depth), bit(&b_key, depth)) {
            (false, true) => (a, b),
            (true, false) => (b, a),
            (false, false) => (Node::split(a, a_key, b, b_key, depth + 1), Node::Empty),
            (true, true) => (Node::Empty, Node::split(a, a_key, b, b_key, depth + 1)),
        };
        Node::Internal(Box::new(Internal {
            left,
            right,
            hash: EMPTY_ROOT,
            dirty: true,
        }))
    }

    /// Sets `key`; returns whether it is a new leaf.
    fn insert(&mut self, depth: usize, key: Hash, vh: &Hash) -> bool {
        match self {
            Node::Empty => {
                *self = Node::leaf(key, vh);
                true
            }
            Node::Leaf { key: k, .. } if *k == key => {
                *self = Node::leaf(key, vh);
                false
            }
            Node::Leaf { key: k, .. } => {
                let old_key = *k;
                let old = std::mem::replace(self, Node::Empty);
                *self = Node::split(old, old_key, Node::leaf(key, vh), key, depth);
                true
            }
            Node::Internal(i) => {
                i.dirty = true;
                if bit(&key, depth) {
                    i.right.insert(depth + 1, key, vh)
                } else {
                    i.left.insert(depth + 1, key, vh)
                }
            }
        }
    }

    /// Removes `key`; returns whether it was present. Collapses internal nodes left with a
    /// single leaf so the shape stays canonical.
    fn remove(&mut self, depth: usize, key: &Hash) -> bool {
        match self {
            Node::Empty => false,
            Node::Leaf { key: k, .. } => {
                if k == key {
                    *self = Node::Empty;
                    true
                } else {
                    false
                }
            }
            Node::Internal(i) => {
                let removed = if bit(key, depth) {
                    i.right.remove(depth + 1, key)
                } else {
                    i.left.remove(depth + 1, key)
                };
                if removed {
                    i.dirty = true;
                    let collapse = match (&i.left, &i.right) {
                        (Node::Empty, Node::Leaf { .. }) => Some(true),
                        (Node::Leaf { .. }, Node::Empty) => Some(false),
                        (Node::Empty, Node::Empty) => {
                            panic!("invariant: an internal node holds at least two leaves")
                        }
                        _ => None,
                    };
                    if let Some(take_right) = collapse {
                        let child = if take_right {
                            std::mem::replace(&mut i.right, Node::Empty)
                        } else {
                            std::mem::replace(&mut i.left, Node::Empty)
                        };
                        *self = child;
                    }
                }
                removed
            }
        }
    }

    fn commit(&mut self) -> Hash {
        match self {
            Node::Internal(i) => {
                if i.dirty {
                    let l = i.left.commit();
                    let r = i.right.commit();
                    i.hash = node_hash(&l, &r);
                    i.dirty = false;
                }
                i.hash
            }
            other => other.hash(),
        }
    }
}

/// A sparse Merkle tree mapping 256-bit keys to value hashes.
#[derive(Debug, Clone)]
pub struct Smt {
    root: Node,
    len: usize,
}

impl Default for Smt {
    fn default() -> Self {
        Smt::new()
    }
}

impl Smt {
    /// An empty tree.
    pub fn new() -> Self {
        Smt {
            root: Node::Empty,
            len: 0,
        }
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `key` to a value whose SHA3-256 is `vh` (insert or replace). Call
    /// [`Smt::commit`] before reading the root.
    pub fn insert(&mut self, key: Hash, vh: Hash) {
        if self.root.insert(0, key, &vh) {
            self.len += 1;
        }
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &Hash) {
        if self.root.remove(0, key) {
            self.len -= 1;
        }
    }

    /// Whether `key` has a leaf.
    pub fn contains(&self, key: &Hash) -> bool {
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => return false,
                Node::Leaf { key: k, .. } => return k == key,
                Node::Internal(i) => {
                    node = if bit(key, depth) { &i.right } else { &i.left };
                    depth += 1;
                }
            }
        }
    }

    /// Rehashes every dirty node and returns the root.
    pub fn commit(&mut self) -> Hash {
        self.root.commit()
    }

    /// The root of a committed tree. Panics if updates are not committed (an internal
    /// invariant of the state machine).
    pub fn root(&self) -> Hash {
        self.root.hash()
    }

    /// A proof of the value at `key`, or of its absence, against [`Smt::root`]. The tree must
    /// be committed.
    pub fn prove(&self, key: &Hash) -> SmtProof {
        let mut siblings = Vec::new();
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => {
                    return SmtProof {
                        siblings,
                        terminal: Terminal::Empty,
                    };
                }
                Node::Leaf { key: k, hash } => {
                    return SmtProof {
                        siblings,
                        terminal: Terminal::Leaf {
                            key: *k,
                            leaf_hash: *hash,
                        },
                    };
                }
                Node::Internal(i) => {
                    let (next, sib) = if bit(key, depth) {
                        (&i.right, &i.left)
                    } else {
                        (&i.left, &i.right)
                    };
                    siblings.push(sib.hash());
                    node = next;
                    depth += 1;
                }
            }
        }
    }
}

/// What a proof's path ends in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Terminal {
    /// An empty subtree: the key is absent.
    Empty,
    /// A leaf: the key's own leaf, or another key's (then the key is absent).
    Leaf {
        /// The leaf's key.
        key: Hash,
        /// The leaf's hash.
        leaf_hash: Hash,
    },
}

/// A Merkle path from a key's position to the root: siblings from the root down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtProof {
    /// Sibling hashes, `siblings[d]` at depth `d + 1`, from the root downwards.
    pub siblings: Vec<Hash>,
    /// Where the path ends.
    pub terminal: Terminal,
}

impl SmtProof {
    /// Checks that under `root`, `key` maps to a value with SHA3-256 `value_hash`
    /// (`Some`), or is absent (`None`).
    pub fn verify(&self, root: &Hash, key: &Hash, vh: Option<&Hash>) -> Result<(), StateError> {
        if self.siblings.len() > 256 {
            return Err(StateError::Proof("path longer than 256"));
        }
        let depth = self.siblings.len();
        let start = match (&self.terminal, vh) {
            (Terminal::Empty, None) => EMPTY_ROOT,
            (Terminal::Empty, Some(_)) => {
                return Err(StateError::Proof("proof shows the key absent"));
            }
            (Terminal::Leaf { key: k, leaf_hash }, Some(vh)) => {
                if k != key {
                    return Err(StateError::Proof("proof shows another key's leaf"));
                }
                if leaf_hash != &self::leaf_hash(key, vh) {
                    return Err(StateError::Proof("value does not match the leaf"));
                }
                *leaf_hash
            }
            (Terminal::Leaf { key: k, leaf_hash }, None) => {
                if k == key {
                    return Err(StateError::Proof("proof shows the key present"));
                }
                // The other leaf must sit on the key's path, i.e. share its first `depth` bits.
                if (0..depth).any(|d| bit(k, d) != bit(key, d)) {
                    return Err(StateError::Proof("other leaf is not on the key's path"));
                }
                *leaf_hash
            }
        };
        let mut acc = start;
        for (d, sib) in self.siblings.iter().enumerate().rev() {
            acc = if bit(key, d) {
                node_hash(sib, &acc)
            } else {
                node_hash(&acc, sib)
            };
        }
        if &acc == root {
            Ok(())
        } else {
            Err(StateError::Proof("recomputed root differs"))
        }
    }

    /// The canonical encoding of the proof.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("invariant: postcard serialises an in-memory proof")
    }

    /// Decodes a proof; refuses trailing bytes, paths longer than 256 and non-canonical
    /// encodings (postcard itself accepts over-long varints).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() > 16 + 257 * 33 + 80 {
            return Err(StateError::Malformed("proof: too long".into()));
        }
        let (p, rest): (SmtProof, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| StateError::Malformed(format!("proof: {e}")))?;
        if !rest.is_empty() || p.siblings.len() > 256 {
            return Err(StateError::Malformed(
                "proof: trailing bytes or path too long".into(),
            ));
        }
        if p.to_bytes() != bytes {
            return Err(StateError::Malformed(
                "proof: not the canonical encoding".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn k(i: u32) -> Hash {
        Sha3_256::digest(i.to_be_bytes()).into()
    }

    /// Root computed from scratch over a sorted key set: the reference definition.
    fn reference_root(items: &BTreeMap<Hash, Hash>) -> Hash {
        fn go(items: &[(Hash, Hash)], depth: usize) -> Hash {
            match items {
                [] => EMPTY_ROOT,
                [(k, v)] => leaf_hash(k, v),
                _ => {
                    let split = items.partition_point(|(k, _)| !bit(k, depth));
                    node_hash(
                        &go(&items[..split], depth + 1),
                        &go(&items[split..], depth + 1),
                    )
                }
            }
        }
        let v: Vec<(Hash, Hash)> = items.iter().map(|(a, b)| (*a, *b)).collect();
        go(&v, 0)
    }

    #[test]
    fn empty_and_single() {
        let mut t = Smt::new();
        assert_eq!(t.commit(), EMPTY_ROOT);
        t.insert(k(1), value_hash(b"x"));
        assert_eq!(t.commit(), leaf_hash(&k(1), &value_hash(b"x")));
        t.remove(&k(1));
        assert_eq!(t.commit(), EMPTY_ROOT);
        assert!(t.is_empty());
    }

    #[test]
    fn keys_sharing_long_prefix() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a[31] = 1;
        b[31] = 2;
        let mut t = Smt::new();
        t.insert(a, value_hash(b"a"));
        t.insert(b, value_hash(b"b"));
        let root = t.commit();
        let p = t.prove(&a);
        assert_eq!(p.siblings.len(), 255);
        p.verify(&root, &a, Some(&value_hash(b"a"))).unwrap();
        let mut c = [0u8; 32];
        c[31] = 3;
        t.prove(&c).verify(&root, &c, None).unwrap();
        t.remove(&b);
        assert_eq!(t.commit(), leaf_hash(&a, &value_hash(b"a")));
    }

    #[test]
    fn proofs_reject_wrong_values() {
        let mut t = Smt::new();
        for i in 0..100 {
            t.insert(k(i), value_hash(&i.to_le_bytes()));
        }
        let root = t.commit();
        for i in 0..100 {
            let p = t.prove(&k(i));
            p.verify(&root, &k(i), Some(&value_hash(&i.to_le_bytes())))
                .unwrap();
            assert!(p.verify(&root, &k(i), Some(&value_hash(b"other"))).is_err());
            assert!(p.verify(&root, &k(i), None).is_err());
            assert!(
                p.verify(&[1; 32], &k(i), Some(&value_hash(&i.to_le_bytes())))
                    .is_err()
            );
            let back = SmtProof::from_bytes(&p.to_bytes()).unwrap();
            assert_eq!(back, p);
        }
        for i in 100..150 {
            let p = t.prove(&k(i));
            p.verify(&root, &k(i), None).unwrap();
            assert!(p.verify(&root, &k(i), Some(&value_hash(b"x"))).is_err());
        }
    }

    proptest! {
        #[test]
        fn incremental_equals_reference(ops in proptest::collection::vec((0u32..40, any::<bool>(), any::<u8>()), 0..120)) {
            let mut t = Smt::new();
            let mut model = BTreeMap::new();
            for (i, (key, insert, val)) in ops.into_iter().enumerate() {
                if insert {
                    t.insert(k(key), value_hash(&[val]));
                    model.insert(k(key), value_hash(&[val]));
                } else {
                    t.remove(&k(key));
                    model.remove(&k(key));
                }
                if i % 7 == 0 {
                    prop_assert_eq!(t.commit(), reference_root(&model));
                }
            }
            let root = t.commit();
            prop_assert_eq!(root, reference_root(&model));
            prop_assert_eq!(t.len(), model.len());
            for key in 0..40 {
                let p = t.prove(&k(key));
                p.verify(&root, &k(key), model.get(&k(key))).unwrap();
            }
        }

        #[test]
        fn proof_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SmtProof::from_bytes(&bytes);
        }
    }
}
