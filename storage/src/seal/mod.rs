//! The sealing envelope: a streaming, key-committing AEAD format for health records.
//!
//! A record of any size is sealed under a 32-byte [`DataKey`] into an *envelope*: a fixed
//! header followed by AES-256-GCM *segments* in the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizar, CRYPTO 2015). Sealing and opening run in constant memory (one segment);
//! truncation, reordering, duplication or any flipped bit is an error that names what failed
//! and where, and an [`Opener`] only releases plaintext of segments that authenticated.
//!
//! # Entry points
//! - push style (sans-IO): [`Sealer`] and [`Opener`] take input pieces of any size and append
//!   output to a caller's `Vec`; [`seal`] and [`open`] do a whole slice at once;
//! - `Read` adapters: [`seal_reader`] and [`open_reader`] (errors are `io::Error`s wrapping a
//!   [`SealError`]: get it back with [`seal_error`]);
//! - random access: [`SealedFile`] / [`open_range`] open a plaintext byte range from
//!   `Read + Seek` sealed bytes, touching only the segments (= IPFS blocks) that hold it;
//! - layout arithmetic on [`SealConfig`] (and [`sealed_len`] for the default config).
//!
//! # Byte-level format, version 1
//!
//! All integers are big-endian. `S` is the segment length (default 262,144 = 256 KiB,
//! the IPFS chunk size), `H = 112` the header length, `T = 16` the GCM tag length.
//!
//! ```text
//! header (H = 112 bytes)
//!   0..8     magic       "EHR-SEAL"
//!   8        version     0x01
//!   9..12    reserved    0x00 0x00 0x00 (must be zero)
//!   12..16   S           u32, sealed segment length, 256 <= S <= 16 MiB
//!   16..48   salt        32 random bytes, fresh for every envelope
//!   48..80   commitment  HMAC-SHA256(Kc, "ehr-seal v1 key commitment" || header[0..48])
//!   80..112  context tag HMAC-SHA256(Kc, "ehr-seal v1 context" || header[0..48] || ctx)
//! segment 0      (S - H bytes): ciphertext of up to S - H - T plaintext bytes || tag
//! segment i >= 1 (S bytes):     ciphertext of up to S - T plaintext bytes     || tag
//! ```
//!
//! Keys, per envelope: `prk = HKDF-Extract(salt, data key)`;
//! `Kc = HKDF-Expand(prk, "ehr-seal v1 commitment key", 32)`;
//! `Ka = HKDF-Expand(prk, "ehr-seal v1 aead key" || ctx, 32)`, the AES-256-GCM key.
//! `ctx` is the encoded [`SealContext`]:
//! `u32 len || policy id || 0x00` or `u32 len || policy id || 0x01 || u32 len || record context`.
//!
//! Segment `i` is `AES-256-GCM(Ka, nonce_i, aad = header[0..112], plaintext_i)` with
//! `nonce_i = u64 i || 0x00 0x00 0x00 || last`, `last = 0x01` on the final segment and `0x00`
//! otherwise. Every segment but the final one carries exactly its full plaintext capacity; the
//! final segment carries 1..=capacity bytes, or 0 bytes when the record is empty (then it is
//! segment 0). So the sealed length is a function of the plaintext length ([`SealConfig::sealed_len`])
//! and back ([`SealConfig::plain_len`]).
//!
//! Opening checks, in order: magic, version, reserved bytes, `S`, then the key commitment in
//! constant time (a mismatch is [`SealError::WrongKey`], reported before any decryption), then the
//! context tag ([`SealError::ContextMismatch`]), then each segment's tag.
//!
//! # Why this design
//! - **Key commitment.** GCM is not key-committing: one ciphertext can be made to open under
//!   two chosen keys (Grubbs-Lu-Ristenpart 2017; Albertini et al. 2022). The commitment is a
//!   collision-resistant function of the data key and the salt, checked before decryption, so no
//!   two keys open the same envelope and a wrong key is reported as such, not as tampering.
//! - **Context binding.** `ctx` enters `Ka` and the context tag; the whole header is the AAD of
//!   every segment, so a segment cannot move between envelopes, contexts or segment lengths.
//! - **STREAM.** The counter in the nonce rejects reordering and duplication; the final flag
//!   rejects truncation at a segment boundary and appended segments. A fresh salt gives each
//!   envelope its own `Ka`, so counters never repeat under one key even when a data key is reused.
//! - **IPFS alignment.** The store cuts the sealed stream into `S`-byte blocks. The header plus
//!   segment 0 is exactly `S` bytes and every later segment is `S` bytes, so sealed segment `i`
//!   *is* leaf block `i`, and a plaintext byte range maps onto exactly the blocks that hold it
//!   ([`SealConfig::sealed_range`]); opening it needs those blocks and block 0's first `H` bytes.
//!
//! # Known limits
//! - `ring` does not zeroize its expanded AES key schedule when a key is dropped; the derived
//!   key bytes and every buffer that held plaintext are zeroized by this module.
//! - Data appended after a *full* final segment is reported as [`SealError::TrailingData`]; data
//!   appended after a shorter final segment merges into it and is reported as a failed segment
//!   ([`SealError::SegmentAuth`]). Either way nothing of that segment is released.
//! - Random access ([`SealedFile`]) trusts the sealed length it is given: cutting whole segments
//!   off the end is detected when the (new) last segment is read, not when an earlier one is.

mod envelope;
mod key;
mod layout;
mod push;
mod read;

pub use envelope::{HEADER_LEN, MAGIC, TAG_LEN, VERSION};
pub use key::{DATA_KEY_LEN, DataKey, MAX_CONTEXT_FIELD_LEN, SealContext};
pub use layout::{
    DEFAULT_SEGMENT_LEN, MAX_SEGMENT_LEN, MIN_SEGMENT_LEN, SealConfig, SealedRange, sealed_len,
};
pub use push::{Opener, Sealer, open, seal};
pub use read::{
    OpenReader, SealReader, SealedFile, open_range, open_reader, seal_error, seal_reader,
    seal_reader_with,
};
