//! The mutation engine and corpus loader shared by every crate's `tests/fuzz_*.rs` harness
//! (each harness includes this file with `#[path = "../../fuzz/mutate.rs"] mod mutate;`).
//!
//! A harness seeds proptest from a committed corpus of valid encodings (`fuzz/corpus/<target>/`,
//! written by the real encoders, see `FUZZING.md`) and derives inputs from them with
//! [`mutated`]: bit flips, byte sets, truncation, removal, insertion, duplication, splicing
//! with another corpus entry, swaps, and edits of the length fields a format uses (big-endian
//! `u16`/`u32`/`u64` and LEB128 varints, including over-long varints that a canonical decoder
//! must refuse). [`raw`] gives unstructured bytes. Case counts come from [`config`], scaled by
//! the `EHR_FUZZ_CASES` environment variable.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The workspace root (the directory that holds `fuzz/`).
pub fn workspace_root() -> PathBuf {
    let here = manifest_dir();
    if here.join("fuzz").is_dir() {
        here.to_path_buf()
    } else {
        here.parent()
            .expect("invariant: a member crate sits inside the workspace")
            .to_path_buf()
    }
}

/// `fuzz/corpus/<target>`.
pub fn corpus_dir(target: &str) -> PathBuf {
    workspace_root().join("fuzz/corpus").join(target)
}

/// `fuzz/regressions/<target>`.
pub fn regressions_dir(target: &str) -> PathBuf {
    workspace_root().join("fuzz/regressions").join(target)
}

/// The multiplier from `EHR_FUZZ_CASES` (default 1). Panics on a value that is not a positive
/// integer, so a typo does not silently run the default.
pub fn scale() -> u32 {
    match std::env::var("EHR_FUZZ_CASES") {
        Err(_) => 1,
        Ok(s) => match s.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("EHR_FUZZ_CASES must be a positive integer multiplier, got {s:?}"),
        },
    }
}

/// A proptest configuration of `default_cases * EHR_FUZZ_CASES` cases. Local rejects are
/// generous because some harnesses filter inputs.
pub fn config(default_cases: u32) -> Config {
    Config {
        cases: default_cases.saturating_mul(scale()),
        max_global_rejects: 100_000,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Whether the corpus generators should (re)write the committed corpus (`EHR_FUZZ_REGEN=1`).
pub fn regenerate() -> bool {
    std::env::var("EHR_FUZZ_REGEN").is_ok_and(|v| v == "1")
}

/// Every file of a directory, sorted by name: (file name, bytes). A missing directory is empty.
pub fn load_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = rd
        .map(|e| e.expect("reading a corpus directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file has a name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {p:?}: {e}"));
            (name, bytes)
        })
        .collect();
    out.sort();
    out
}

/// The committed corpus of a target; panics if it is empty (a harness without seeds would
/// only ever test the first few bytes of a format).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let c = load_dir(&corpus_dir(target));
    assert!(
        !c.is_empty(),
        "fuzz/corpus/{target} is empty; run the corpus generator with EHR_FUZZ_REGEN=1"
    );
    c
}

/// The committed regressions of a target (may be empty).
pub fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    load_dir(&regressions_dir(target))
}

/// Writes `entries` as the corpus of `target` when [`regenerate`] is set (replacing the old
/// files); otherwise returns the names of the entries that are not committed byte for byte
/// (the caller decides whether a difference is an error: encoders that draw randomness never
/// reproduce the committed bytes).
pub fn sync_corpus(target: &str, entries: &[(&str, Vec<u8>)]) -> Vec<String> {
    let dir = corpus_dir(target);
    if regenerate() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        for (name, bytes) in entries {
            std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        }
        return Vec::new();
    }
    let committed = load_dir(&dir);
    entries
        .iter()
        .filter(|(name, bytes)| !committed.iter().any(|(n, b)| n == name && b == bytes))
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// Values that break length checks and integer arithmetic.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// A position as a fraction of a length (`len * p / 2^32`), so it fits any input.
#[derive(Clone, Copy, Debug)]
pub struct Pos(pub u32);

impl Pos {
    /// The position in `0..size`; `size` must not be zero.
    pub fn index(self, size: usize) -> usize {
        assert!(
            size > 0,
            "invariant: a position is resolved against a non-empty length"
        );
        ((size as u64 * u64::from(self.0)) >> 32) as usize
    }
}

fn pos() -> impl Strategy<Value = Pos> {
    any::<u32>().prop_map(Pos)
}

/// One edit of a byte string. Positions are [`Pos`]itions, resolved against the current length.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(Pos, u8),
    /// Overwrite one byte.
    SetByte(Pos, u8),
    /// Keep only a prefix.
    Truncate(Pos),
    /// Remove up to `n` bytes.
    Remove(Pos, u8),
    /// Insert bytes.
    Insert(Pos, Vec<u8>),
    /// Copy a slice of up to `n` bytes and insert the copy right after it.
    Duplicate(Pos, u16),
    /// Overwrite (or, if `insert`, insert) up to `n` bytes taken from another corpus entry.
    Splice {
        /// Which corpus entry.
        other: Pos,
        /// Where in it.
        from: Pos,
        /// Where in the input.
        at: Pos,
        /// How many bytes at most.
        n: u16,
        /// Insert instead of overwriting.
        insert: bool,
    },
    /// Swap two slices of up to `n` bytes.
    Swap(Pos, Pos, u8),
    /// Overwrite a big-endian integer of `width` bytes with an interesting value.
    SetInt(Pos, u8, usize),
    /// Add a small delta to a big-endian integer of `width` bytes (a length field edit).
    NudgeInt(Pos, u8, i8),
    /// Re-encode the LEB128 varint at a position with a delta added (postcard lengths, tags).
    NudgeVarint(Pos, i8),
    /// Re-encode the LEB128 varint at a position over-long (one extra continuation byte): the
    /// same value in a non-canonical form.
    OverlongVarint(Pos),
    /// Replace the LEB128 varint at a position with an interesting value.
    SetVarint(Pos, usize),
}

/// A strategy for one mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (pos(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (pos(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => pos().prop_map(Mutation::Truncate),
        1 => (pos(), 1u8..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (pos(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (pos(), 1u16..512).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => (pos(), pos(), pos(), 1u16..512, any::<bool>())
            .prop_map(|(other, from, at, n, insert)| Mutation::Splice { other, from, at, n, insert }),
        1 => (pos(), pos(), 1u8..64).prop_map(|(a, b, n)| Mutation::Swap(a, b, n)),
        2 => (pos(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], 0..INTERESTING.len())
            .prop_map(|(i, w, v)| Mutation::SetInt(i, w, v)),
        2 => (pos(), prop_oneof![Just(2u8), Just(4), Just(8)], -3i8..=3)
            .prop_map(|(i, w, d)| Mutation::NudgeInt(i, w, d)),
        2 => (pos(), -3i8..=3).prop_map(|(i, d)| Mutation::NudgeVarint(i, d)),
        1 => pos().prop_map(Mutation::OverlongVarint),
        1 => (pos(), 0..INTERESTING.len()).prop_map(|(i, v)| Mutation::SetVarint(i, v)),
    ]
}

fn read_varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (k, byte) in b.get(at..)?.iter().take(10).enumerate() {
        if k == 9 && *byte > 1 {
            // More than 64 bits: not a u64 varint.
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * k as u32);
        if byte & 0x80 == 0 {
            return Some((v, k + 1));
        }
    }
    None
}

fn write_varint(mut v: u64, overlong: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            if overlong {
                out.push(byte | 0x80);
                out.push(0);
            } else {
                out.push(byte);
            }
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Applies one mutation in place (`corpus` feeds splices). Never panics, never grows the input
/// beyond `max_len`.
pub fn apply(data: &mut Vec<u8>, m: &Mutation, corpus: &[Vec<u8>], max_len: usize) {
    let len = data.len();
    let here = |i: &Pos| if len == 0 { 0 } else { i.index(len) };
    let pos_incl = |i: &Pos| i.index(len + 1);
    match m {
        Mutation::FlipBit(i, b) if len > 0 => data[here(i)] ^= 1 << b,
        Mutation::SetByte(i, v) if len > 0 => data[here(i)] = *v,
        Mutation::Truncate(i) => data.truncate(here(i)),
        Mutation::Remove(i, n) if len > 0 => {
            let at = here(i);
            let end = (at + usize::from(*n)).min(len);
            data.drain(at..end);
        }
        Mutation::Insert(i, bytes) => {
            let at = pos_incl(i);
            data.splice(at..at, bytes.iter().copied());
        }
        Mutation::Duplicate(i, n) if len > 0 => {
            let at = here(i);
            let end = (at + usize::from(*n)).min(len);
            let copy = data[at..end].to_vec();
            data.splice(end..end, copy);
        }
        Mutation::Splice {
            other,
            from,
            at,
            n,
            insert,
        } if !corpus.is_empty() => {
            let src = &corpus[other.index(corpus.len())];
            if src.is_empty() {
                return;
            }
            let f = from.index(src.len());
            let piece = &src[f..(f + usize::from(*n)).min(src.len())];
            let at = pos_incl(at);
            if *insert {
                data.splice(at..at, piece.iter().copied());
            } else {
                let end = (at + piece.len()).min(len);
                data.splice(at..end, piece.iter().copied());
            }
        }
        Mutation::Swap(a, b, n) if len > 1 => {
            let (mut a, mut b) = (here(a), here(b));
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            let n = usize::from(*n).min(b - a).min(len - b);
            for k in 0..n {
                data.swap(a + k, b + k);
            }
        }
        Mutation::SetInt(i, w, v) => {
            let w = usize::from(*w);
            if len >= w {
                let at = i.index(len - w + 1);
                let bytes = INTERESTING[*v].to_be_bytes();
                data[at..at + w].copy_from_slice(&bytes[8 - w..]);
            }
        }
        Mutation::NudgeInt(i, w, d) => {
            let w = usize::from(*w);
            if len >= w {
                let at = i.index(len - w + 1);
                let mut buf = [0u8; 8];
                buf[8 - w..].copy_from_slice(&data[at..at + w]);
                let v = u64::from_be_bytes(buf).wrapping_add_signed(i64::from(*d));
                data[at..at + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
            }
        }
        Mutation::NudgeVarint(i, d) if len > 0 => {
            let at = here(i);
            if let Some((v, n)) = read_varint(data, at) {
                let new = write_varint(v.wrapping_add_signed(i64::from(*d)), false);
                data.splice(at..at + n, new);
            }
        }
        Mutation::OverlongVarint(i) if len > 0 => {
            let at = here(i);
            if let Some((v, n)) = read_varint(data, at) {
                data.splice(at..at + n, write_varint(v, true));
            }
        }
        Mutation::SetVarint(i, v) if len > 0 => {
            let at = here(i);
            if let Some((_, n)) = read_varint(data, at) {
                data.splice(at..at + n, write_varint(INTERESTING[*v], false));
            }
        }
        _ => {}
    }
    data.truncate(max_len);
}

/// Inputs derived from a corpus entry by 1 to `max_mutations` mutations, at most `max_len`
/// bytes. Returns (seed index, mutations, result) so a failure names what was done.
pub fn mutated(
    corpus: Arc<Vec<Vec<u8>>>,
    max_mutations: usize,
    max_len: usize,
) -> impl Strategy<Value = Vec<u8>> {
    assert!(
        !corpus.is_empty(),
        "invariant: a mutation corpus is not empty"
    );
    (
        pos(),
        proptest::collection::vec(mutation(), 1..=max_mutations),
    )
        .prop_map(move |(seed, ms)| {
            let mut data = corpus[seed.index(corpus.len())].clone();
            for m in &ms {
                apply(&mut data, m, &corpus, max_len);
            }
            data
        })
}

/// Unstructured bytes: uniformly random, or a corpus entry's first bytes (so the kind, version
/// and magic checks pass) followed by random bytes.
pub fn raw(corpus: Arc<Vec<Vec<u8>>>, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let tail = proptest::collection::vec(any::<u8>(), 0..max_len);
    prop_oneof![
        tail.clone(),
        (pos(), 0usize..64, tail).prop_map(move |(seed, keep, tail)| {
            let s = &corpus[seed.index(corpus.len())];
            let mut v = s[..keep.min(s.len())].to_vec();
            v.extend_from_slice(&tail);
            v.truncate(max_len);
            v
        }),
    ]
}

/// Mutated and raw inputs, mostly mutated (structure reaches the deep decoder paths).
pub fn inputs(corpus: Arc<Vec<Vec<u8>>>, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutated(corpus.clone(), 4, max_len),
        1 => raw(corpus, max_len.min(4096)),
    ]
}

/// The corpus bytes alone, shared for strategies.
pub fn seeds(target: &str) -> Arc<Vec<Vec<u8>>> {
    Arc::new(corpus(target).into_iter().map(|(_, b)| b).collect())
}

#[test]
fn mutation_engine_edits_varints_and_ints() {
    // An over-long varint keeps the value but not the bytes.
    let mut d = vec![0x05, 0xAA];
    apply(&mut d, &Mutation::OverlongVarint(Pos(0)), &[], 64);
    assert_eq!(d, vec![0x85, 0x00, 0xAA]);
    assert_eq!(read_varint(&d, 0), Some((5, 2)));
    // A nudge crosses a width boundary.
    let mut d = vec![0x7f];
    apply(&mut d, &Mutation::NudgeVarint(Pos(0), 1), &[], 64);
    assert_eq!(d, vec![0x80, 0x01]);
    // Big-endian length fields.
    let mut d = vec![0x00, 0x10, 0xAA];
    apply(&mut d, &Mutation::NudgeInt(Pos(0), 2, -1), &[], 64);
    assert_eq!(d, vec![0x00, 0x0f, 0xAA]);
    // Splices take bytes from another entry; the length cap holds.
    let mut d = vec![1, 2, 3];
    let other = vec![vec![9u8; 100]];
    let m = Mutation::Splice {
        other: Pos(0),
        from: Pos(0),
        at: Pos(0),
        n: 100,
        insert: true,
    };
    apply(&mut d, &m, &other, 50);
    assert_eq!(d.len(), 50);
    assert!(d.iter().all(|&b| b == 9));
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
