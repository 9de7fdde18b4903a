//! Properties of the sealing envelope: round trips, tamper and truncation detection,
//! key commitment, context binding, and block alignment of range reads.

use std::io::{Cursor, Read};

use ehr_storage::SealError;
use ehr_storage::seal::{
    DataKey, HEADER_LEN, Opener, SealConfig, SealContext, SealedFile, Sealer, open_range,
    open_reader, seal_reader_with,
};
use proptest::prelude::*;

/// Small segments so that a few KiB span several segments.
const SMALL: SealConfig = SealConfig { segment_len: 256 };
const BLOCK: usize = 256;

fn key() -> DataKey {
    DataKey::from_bytes([0x42; 32])
}

fn ctx() -> SealContext {
    SealContext::new(b"policy-A".to_vec()).with_record(b"record-1".to_vec())
}

fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn seal_pieces(plain: &[u8], piece: usize, config: SealConfig) -> Vec<u8> {
    let mut sealer = Sealer::new(&key(), &ctx(), config).unwrap();
    let mut out = Vec::new();
    for p in plain.chunks(piece.max(1)) {
        sealer.update(p, &mut out);
    }
    sealer.finish(&mut out);
    out
}

fn open_pieces(
    key: &DataKey,
    ctx: &SealContext,
    sealed: &[u8],
    piece: usize,
) -> Result<Vec<u8>, SealError> {
    let mut opener = Opener::new(key, ctx)?;
    let mut out = Vec::new();
    for p in sealed.chunks(piece.max(1)) {
        opener.update(p, &mut out)?;
    }
    opener.finish(&mut out)?;
    Ok(out)
}

/// Lengths biased to segment boundaries +-1 of the small layout, plus 0 and 1.
fn interesting_len() -> impl Strategy<Value = usize> {
    let first = SMALL.first_segment_plain_len() as usize;
    let full = SMALL.segment_plain_len() as usize;
    prop_oneof![
        Just(0usize),
        Just(1usize),
        (0usize..6, 0usize..3).prop_map(move |(k, d)| first + k * full + d - 1),
        0usize..3000,
    ]
}

/// Splits sealed bytes into its blocks (header + segment 0 is block 0).
fn blocks(sealed: &[u8]) -> Vec<Vec<u8>> {
    sealed.chunks(BLOCK).map(<[u8]>::to_vec).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_any_length_and_pieces(
        len in interesting_len(),
        seal_piece in 1usize..700,
        open_piece in 1usize..700,
        seed in any::<u8>(),
    ) {
        let plain = plaintext(len, seed);
        let sealed = seal_pieces(&plain, seal_piece, SMALL);
        prop_assert_eq!(sealed.len() as u64, SMALL.sealed_len(len as u64));
        prop_assert_eq!(SMALL.plain_len(sealed.len() as u64).unwrap(), len as u64);
        // Header + segment 0 fill block 0 exactly; every later block but the last is full.
        prop_assert_eq!(SMALL.segment_count(len as u64) as usize, blocks(&sealed).len());
        prop_assert_eq!(open_pieces(&key(), &ctx(), &sealed, open_piece).unwrap(), plain.clone());
        // The Read adapters agree with the push API byte for byte in length and content.
        let mut via_reader = Vec::new();
        seal_reader_with(&key(), &ctx(), SMALL, &plain[..]).unwrap()
            .read_to_end(&mut via_reader).unwrap();
        prop_assert_eq!(via_reader.len(), sealed.len());
        let mut back = Vec::new();
        open_reader(&key(), &ctx(), &via_reader[..]).unwrap().read_to_end(&mut back).unwrap();
        prop_assert_eq!(back, plain);
    }

    #[test]
    fn any_flipped_bit_is_an_error(len in interesting_len(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let plain = plaintext(len, 1);
        let mut sealed = seal_pieces(&plain, 1000, SMALL);
        let at = pos.index(sealed.len());
        sealed[at] ^= 1 << bit;
        let err = open_pieces(&key(), &ctx(), &sealed, 97).unwrap_err();
        if at >= HEADER_LEN {
            let segment = (at / BLOCK) as u64;
            prop_assert!(
                matches!(err, SealError::SegmentAuth { segment: s, .. } if s == segment),
                "byte {} -> {}", at, err
            );
        }
        // Random access reports the same failure for the segment holding the byte.
        if at >= HEADER_LEN {
            let mut file = SealedFile::open(&key(), &ctx(), Cursor::new(&sealed)).unwrap();
            prop_assert!(file.read_segment((at / BLOCK) as u64, &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn any_truncation_is_an_error(len in interesting_len(), cut in any::<prop::sample::Index>()) {
        let plain = plaintext(len, 2);
        let sealed = seal_pieces(&plain, 1000, SMALL);
        let cut = cut.index(sealed.len());
        let err = open_pieces(&key(), &ctx(), &sealed[..cut], 300).unwrap_err();
        if cut < HEADER_LEN {
            prop_assert!(matches!(err, SealError::TruncatedHeader { .. }), "{}", err);
        } else if cut % BLOCK == 0 || cut == HEADER_LEN {
            // Cut exactly at a segment boundary: reported as truncation, not tampering.
            prop_assert!(matches!(err, SealError::Truncated { .. }), "cut {} -> {}", cut, err);
        }
    }

    #[test]
    fn swapped_or_duplicated_segments_are_errors(
        len in 600usize..3000,
        i in any::<prop::sample::Index>(),
        j in any::<prop::sample::Index>(),
        piece in 1usize..600,
    ) {
        let plain = plaintext(len, 3);
        let sealed = seal_pieces(&plain, 1000, SMALL);
        let bl = blocks(&sealed);
        prop_assume!(bl.len() >= 2);
        let (i, j) = (i.index(bl.len()), j.index(bl.len()));
        if i != j {
            let mut swapped = bl.clone();
            swapped.swap(i, j);
            prop_assert!(open_pieces(&key(), &ctx(), &swapped.concat(), piece).is_err());
        }
        let mut duplicated = bl.clone();
        duplicated.insert(j, bl[i].clone());
        prop_assert!(open_pieces(&key(), &ctx(), &duplicated.concat(), piece).is_err());
        let mut dropped = bl;
        dropped.remove(i);
        prop_assert!(open_pieces(&key(), &ctx(), &dropped.concat(), piece).is_err());
    }

    #[test]
    fn wrong_key_and_wrong_context_are_named(len in interesting_len(), byte in any::<u8>()) {
        let sealed = seal_pieces(&plaintext(len, 4), 1000, SMALL);
        let mut wrong = [0x42; 32];
        wrong[(byte % 32) as usize] ^= 1 | byte;
        let err = open_pieces(&DataKey::from_bytes(wrong), &ctx(), &sealed, 1000).unwrap_err();
        prop_assert!(matches!(err, SealError::WrongKey), "{}", err);
        for other in [
            SealContext::new(b"policy-A".to_vec()),
            SealContext::new(b"policy-B".to_vec()).with_record(b"record-1".to_vec()),
            SealContext::new(b"policy-A".to_vec()).with_record(b"record-2".to_vec()),
        ] {
            let err = open_pieces(&key(), &other, &sealed, 1000).unwrap_err();
            prop_assert!(matches!(err, SealError::ContextMismatch), "{}", err);
        }
    }

    #[test]
    fn range_reads_need_only_their_blocks(
        len in 1usize..4000,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let plain = plaintext(len, 5);
        let sealed = seal_pieces(&plain, 1000, SMALL);
        let (mut s, mut e) = (a.index(len + 1) as u64, b.index(len + 1) as u64);
        if s > e { std::mem::swap(&mut s, &mut e); }
        let range = SMALL.sealed_range(len as u64, s..e).unwrap();
        prop_assert_eq!(&range.blocks, &range.segments);
        // Blank every byte outside the header and the range's blocks: the read still works.
        let mut sparse = vec![0u8; sealed.len()];
        sparse[..HEADER_LEN].copy_from_slice(&sealed[..HEADER_LEN]);
        let (from, to) = (range.sealed.start as usize, range.sealed.end as usize);
        sparse[from..to].copy_from_slice(&sealed[from..to]);
        if !range.segments.is_empty() {
            prop_assert_eq!(from, (range.blocks.start as usize * BLOCK).max(HEADER_LEN));
            prop_assert_eq!(to, (range.blocks.end as usize * BLOCK).min(sealed.len()));
        }
        let got = open_range(&key(), &ctx(), Cursor::new(&sparse), s..e).unwrap();
        prop_assert_eq!(&got[..], &plain[s as usize..e as usize]);
    }
}

proptest! {
    // Default 256 KiB layout on records of up to ~1.3 MiB: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn default_layout_segments_start_on_ipfs_blocks(
        len in 0usize..1_300_000,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        const IPFS_BLOCK: usize = 262_144;
        let config = SealConfig::default();
        let plain = plaintext(len, 6);
        let sealed = seal_pieces(&plain, 100_000, config);
        prop_assert_eq!(sealed.len() as u64, config.sealed_len(len as u64));
        let mut file = SealedFile::open(&key(), &ctx(), Cursor::new(&sealed)).unwrap();
        // Every block after the first begins a segment, and that segment is the block.
        for (k, block) in sealed.chunks(IPFS_BLOCK).enumerate().skip(1) {
            prop_assert_eq!(config.segment_sealed_start(k as u64), (k * IPFS_BLOCK) as u64);
            let mut seg = Vec::new();
            file.read_segment(k as u64, &mut seg).unwrap();
            let start = config.segment_plain_start(k as u64) as usize;
            prop_assert_eq!(block.len(), seg.len() + 16);
            prop_assert_eq!(&seg[..], &plain[start..start + seg.len()]);
        }
        let (mut s, mut e) = (a.index(len + 1) as u64, b.index(len + 1) as u64);
        if s > e { std::mem::swap(&mut s, &mut e); }
        prop_assert_eq!(&file.read_range(s..e).unwrap()[..], &plain[s as usize..e as usize]);
    }
}
