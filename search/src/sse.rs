//! Search keys with epochs (key regression), keywords, per-entry labels, counters and trapdoors.
//!
//! This is the client side of the searchable encryption: hospitals derive labels for the records
//! they upload, researchers derive trapdoors for the keywords they search. The index side
//! ([`crate::index`]) only ever sees [`Label`]s and [`Trapdoor`]s.
//!
//! # Scheme
//! Multi-user SSE in the style of Cash et al.'s Π_bas (NDSS 2014), with CP-ABE standing in for
//! broadcast encryption to share the search key and key regression for revocation:
//!
//! - **Search key per (hospital, policy)**: a [`SearchKeyOwner`] (kept by the hospital) holds the
//!   seed of a key-regression chain; what is shared with readers (wrapped with CP-ABE in a
//!   *capsule*) is a [`SearchKeyState`] for one epoch.
//! - **Key regression** (Fu–Kamara–Kohno, NDSS 2006, the hash-chain construction "KR-SHA"):
//!   the owner draws a random 32-byte member state `stm_max` for the last epoch of the chain and
//!   defines `stm_{e-1} = SHA-256("ehr/sse/v1/kr-unwind" || stm_e)`. The epoch key is a separate
//!   derivation, `K_e = HMAC(stm_e, "ehr/sse/v1/kr-epoch-key" || e)`, so `K_e` reveals nothing about
//!   `stm_e`, and `stm_e` derives every state (hence every key) of epochs `<= e` but, SHA-256 being
//!   one-way, none later. A revocation starts a new epoch: readers who only ever received states up
//!   to `e` cannot compute `K_{e+1}`. The [`SearchKeyState`] API has no method that goes forward.
//!   A chain has a fixed number of epochs ([`DEFAULT_CHAIN_EPOCHS`], 65,536, chosen so the owner's
//!   worst-case unwinding is ~65k SHA-256 compressions, a few milliseconds); when it is exhausted
//!   ([`SseError::ChainExhausted`]) the hospital publishes a fresh search key.
//! - **Keyword keys**: `K_{w,e} = HMAC(K_e, "ehr/sse/v1/keyword" || field || len(w) || w)`.
//! - **Labels**: the `c`-th record carrying `w` in epoch `e` gets the label
//!   `HMAC(K_{w,e}, "ehr/sse/v1/label" || c)` truncated to 16 bytes, `c = 0, 1, 2, ...`.
//!   The index thus holds no deterministic per-keyword term: at rest it is a set of random-looking
//!   16-byte strings, so keyword frequencies and co-occurrences are not readable from it.
//! - **Trapdoors**: a [`Trapdoor`] is one `K_{w,e}`; a keyword query for a capsule carries one
//!   trapdoor per epoch `0..=e`. The index expands `PRF(K_{w,e}, 0), PRF(K_{w,e}, 1), ...` until
//!   the first absent label (or a short gap, see the index's `max_gap`) and collects the records.
//!   A search reveals its own search pattern (repeated trapdoors are recognisable) and access
//!   pattern (which records matched), and, because the index sees the labels it expanded, which
//!   entries belong to the same keyword chain after the fact. Uploads after a search are not
//!   linkable to it once the epoch changes (per-epoch keys).
//!
//! Every PRF use is domain-separated by an ASCII label `ehr/sse/v1/...`. HMAC-SHA256 is computed
//! here directly on SHA-256's compression function with the key's inner and outer states
//! precomputed once per key (two compressions per label, the hot path of a search), so every
//! key-equivalent state is held in zeroizable arrays; tests check it against the `hmac` crate.
//!
//! # Keyword normalisation
//! - [`Field::Code`]: a FHIR coding token `system|code`. Surrounding whitespace is trimmed and the
//!   token is otherwise exact (codes are case-sensitive in FHIR). It must contain a `|` followed
//!   by a non-empty code; the system may be empty (`|code`).
//! - [`Field::Text`]: a single word. Surrounding whitespace is trimmed and it is lower-cased with
//!   Unicode's default case mapping; no inner whitespace is allowed (tokenising free text into
//!   words is the caller's job). No Unicode normalisation (NFC) is applied.
//!
//! Both reject control characters and values longer than [`MAX_KEYWORD_BYTES`].
//!
//! # Capsules
//! A [`Capsule`] is a [`SearchKeyState`] wrapped with CP-ABE ([`crate::abe::wrap`]) under the
//! (hospital, policy)'s access policy, with `"ehr/sse/v1/capsule" || capsule id || epoch` as
//! associated data. Rotation publishes a new capsule for the new epoch; researchers whose
//! attributes satisfy the policy open the newest capsule and derive every earlier epoch from it.
//!
//! # Counters
//! The uploader keeps, per (capsule, epoch, field, keyword), the next counter in a
//! [`LabelCounter`]. [`MemoryCounters`] keeps them in memory; [`FileCounters`] keeps them in an
//! append-only file keyed by `HMAC(K_{w,e}, "ehr/sse/v1/counter-id")` with the counter value
//! AES-256-GCM-encrypted under `HMAC(K_{w,e}, "ehr/sse/v1/counter-key")`: no keyword, keyword key
//! or counter value is on disk in the clear. What the file leaks: the number of distinct
//! (capsule, epoch, keyword) chains and how often each entry was updated (its number of records).
//! Anyone later given the trapdoor `K_{w,e}` can find and read that keyword's entry, which tells
//! them no more than searching does.
//!
//! Counters must never be reused (a reused label would link two records); a gap (counters reserved
//! for an upload that never reached the ledger) is tolerated by the index up to its `max_gap`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand::{CryptoRng, RngCore};
use sha2::digest::generic_array::GenericArray;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::SseError;

/// Number of epochs in a key-regression chain made by [`SearchKeyOwner::generate`].
pub const DEFAULT_CHAIN_EPOCHS: u32 = 1 << 16;
/// Longest keyword value accepted, in bytes (after normalisation).
pub const MAX_KEYWORD_BYTES: usize = 1024;
/// Length of a label in bytes.
pub const LABEL_LEN: usize = 16;
/// Length of an encoded [`SearchKeyState`] ([`SearchKeyState::to_bytes`]).
pub const STATE_ENCODED_LEN: usize = 1 + 4 + 32;
/// Length of an encoded [`Trapdoor`] ([`Trapdoor::to_bytes`]).
pub const TRAPDOOR_ENCODED_LEN: usize = 1 + 32 + 4 + 32;

const ENCODING_VERSION: u8 = 1;
const DS_UNWIND: &[u8] = b"ehr/sse/v1/kr-unwind";
const DS_EPOCH_KEY: &[u8] = b"ehr/sse/v1/kr-epoch-key";
const DS_KEYWORD: &[u8] = b"ehr/sse/v1/keyword";
const DS_LABEL: &[u8] = b"ehr/sse/v1/label";
const DS_COUNTER_ID: &[u8] = b"ehr/sse/v1/counter-id";
const DS_COUNTER_KEY: &[u8] = b"ehr/sse/v1/counter-key";

// ---------------------------------------------------------------------------------------------
// SHA-256 / HMAC-SHA256 on the compression function
// ---------------------------------------------------------------------------------------------

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(
        state,
        core::slice::from_ref(GenericArray::from_slice(block)),
    );
}

/// SHA-256 of `parts`, continuing from `state` after `prefix_len` bytes already absorbed.
fn sha256_continue(mut state: [u32; 8], prefix_len: u64, parts: &[&[u8]]) -> [u8; 32] {
    let mut buf = [0u8; 64];
    let mut fill = 0usize;
    let mut total = prefix_len;
    for part in parts {
        let mut p: &[u8] = part;
        total += p.len() as u64;
        while !p.is_empty() {
            let take = (64 - fill).min(p.len());
            buf[fill..fill + take].copy_from_slice(&p[..take]);
            fill += take;
            p = &p[take..];
            if fill == 64 {
                compress(&mut state, &buf);
                fill = 0;
            }
        }
    }
    buf[fill] = 0x80;
    fill += 1;
    if fill > 56 {
        buf[fill..].fill(0);
        compress(&mut state, &buf);
        fill = 0;
    }
    buf[fill..56].fill(0);
    buf[56..].copy_from_slice(&(total * 8).to_be_bytes());
    compress(&mut state, &buf);
    buf.zeroize();
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state.iter()) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    state.zeroize();
    out
}

/// HMAC-SHA256 keyed with a 32-byte key, inner and outer states precomputed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Prf {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Prf {
    fn new(key: &[u8; 32]) -> Prf {
        let mut block = [0x36u8; 64];
        for (b, k) in block.iter_mut().zip(key.iter()) {
            *b ^= k;
        }
        let mut inner = SHA256_IV;
        compress(&mut inner, &block);
        for b in block.iter_mut() {
            *b ^= 0x36 ^ 0x5c;
        }
        let mut outer = SHA256_IV;
        compress(&mut outer, &block);
        block.zeroize();
        Prf { inner, outer }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner_digest = sha256_continue(self.inner, 64, parts);
        let out = sha256_continue(self.outer, 64, &[&inner_digest]);
        inner_digest.zeroize();
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Key regression
// ---------------------------------------------------------------------------------------------

fn unwind(state: &[u8; 32]) -> [u8; 32] {
    sha256_continue(SHA256_IV, 0, &[DS_UNWIND, state])
}

fn epoch_key_from_state(epoch: u32, state: &[u8; 32]) -> EpochKey {
    let prf = Prf::new(state);
    let mut key = prf.mac(&[DS_EPOCH_KEY, &epoch.to_be_bytes()]);
    let out = EpochKey {
        epoch,
        prf: Prf::new(&key),
    };
    key.zeroize();
    out
}

/// The hospital's search key for one (hospital, policy): the seed of a key-regression chain and
/// the current epoch. It can rotate (start a new epoch) and hand out [`SearchKeyState`]s.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SearchKeyOwner {
    /// Member state of the chain's last epoch `max_epoch`.
    seed: [u8; 32],
    max_epoch: u32,
    current: u32,
    /// Cached member state of `current`.
    current_state: [u8; 32],
}

impl fmt::Debug for SearchKeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchKeyOwner")
            .field("epoch", &self.current)
            .field("max_epoch", &self.max_epoch)
            .field("seed", &"<redacted>")
            .finish()
    }
}

impl SearchKeyOwner {
    /// A fresh search key with [`DEFAULT_CHAIN_EPOCHS`] epochs, starting at epoch 0.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> SearchKeyOwner {
        Self::generate_with_epochs(rng, DEFAULT_CHAIN_EPOCHS)
            .expect("DEFAULT_CHAIN_EPOCHS is a valid chain length")
    }

    /// A fresh search key whose chain has `epochs` epochs (`0..epochs`), starting at epoch 0.
    pub fn generate_with_epochs<R: RngCore + CryptoRng>(
        rng: &mut R,
        epochs: u32,
    ) -> Result<SearchKeyOwner, SseError> {
        if epochs == 0 || epochs > DEFAULT_CHAIN_EPOCHS {
            return Err(SseError::Encoding {
                what: "chain length",
                reason: "must be between 1 and DEFAULT_CHAIN_EPOCHS",
            });
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Ok(Self::from_parts(seed, epochs - 1, 0))
    }

    fn from_parts(seed: [u8; 32], max_epoch: u32, current: u32) -> SearchKeyOwner {
        let mut owner = SearchKeyOwner {
            seed,
            max_epoch,
            current,
            current_state: [0u8; 32],
        };
        owner.current_state = owner.state_bytes(current);
        owner
    }

    fn state_bytes(&self, epoch: u32) -> [u8; 32] {
        debug_assert!(epoch <= self.max_epoch);
        let mut s = self.seed;
        for _ in epoch..self.max_epoch {
            let next = unwind(&s);
            s.zeroize();
            s = next;
        }
        s
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.current
    }

    /// The last epoch this chain can reach.
    pub fn max_epoch(&self) -> u32 {
        self.max_epoch
    }

    /// Starts the next epoch (after a revocation) and returns it.
    pub fn rotate(&mut self) -> Result<u32, SseError> {
        if self.current >= self.max_epoch {
            return Err(SseError::ChainExhausted(self.current));
        }
        self.current += 1;
        self.current_state = self.state_bytes(self.current);
        tracing::debug!(epoch = self.current, "search key rotated");
        Ok(self.current)
    }

    /// The state of the current epoch: what a capsule for this epoch wraps.
    pub fn state(&self) -> SearchKeyState {
        SearchKeyState {
            epoch: self.current,
            state: self.current_state,
        }
    }

    /// The key of the current epoch, used to label new uploads.
    pub fn epoch_key(&self) -> EpochKey {
        epoch_key_from_state(self.current, &self.current_state)
    }

    /// Serialises the owner (secret; store it encrypted): version, max epoch, current epoch, seed.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(41));
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.max_epoch.to_be_bytes());
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&self.seed);
        out
    }

    /// Parses [`SearchKeyOwner::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SearchKeyOwner, SseError> {
        let what = "search key owner";
        if bytes.len() != 41 {
            return Err(SseError::Encoding {
                what,
                reason: "length is not 41 bytes",
            });
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(SseError::Encoding {
                what,
                reason: "unknown version",
            });
        }
        let max_epoch = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let current = u32::from_be_bytes(bytes[5..9].try_into().expect("4 bytes"));
        if max_epoch >= DEFAULT_CHAIN_EPOCHS || current > max_epoch {
            return Err(SseError::Encoding {
                what,
                reason: "epoch out of range",
            });
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[9..]);
        Ok(Self::from_parts(seed, max_epoch, current))
    }
}

/// A reader's view of a search key: the member state of one epoch. It derives the keys of that
/// epoch and every earlier one, never a later one. This is what a capsule wraps.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SearchKeyState {
    epoch: u32,
    state: [u8; 32],
}

impl fmt::Debug for SearchKeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchKeyState")
            .field("epoch", &self.epoch)
            .field("state", &"<redacted>")
            .finish()
    }
}

impl SearchKeyState {
    /// The epoch of this state.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The state of an earlier (or the same) epoch; `Err` for a later one.
    pub fn unwind_to(&self, epoch: u32) -> Result<SearchKeyState, SseError> {
        if epoch > self.epoch {
            return Err(SseError::EpochNotDerivable {
                requested: epoch,
                held: self.epoch,
            });
        }
        let mut s = self.state;
        for _ in epoch..self.epoch {
            let next = unwind(&s);
            s.zeroize();
            s = next;
        }
        Ok(SearchKeyState { epoch, state: s })
    }

    /// The key of `epoch`, which must not be later than this state's epoch.
    pub fn epoch_key(&self, epoch: u32) -> Result<EpochKey, SseError> {
        let st = self.unwind_to(epoch)?;
        Ok(epoch_key_from_state(epoch, &st.state))
    }

    /// The keys of every epoch `0..=self.epoch()`, in epoch order.
    pub fn all_epoch_keys(&self) -> Vec<EpochKey> {
        let mut keys = Vec::with_capacity(self.epoch as usize + 1);
        let mut s = self.state;
        let mut e = self.epoch;
        loop {
            keys.push(epoch_key_from_state(e, &s));
            if e == 0 {
                break;
            }
            let next = unwind(&s);
            s.zeroize();
            s = next;
            e -= 1;
        }
        s.zeroize();
        keys.reverse();
        keys
    }

    /// The trapdoors for `keyword` in `capsule`: one per epoch `0..=self.epoch()`.
    pub fn trapdoors(&self, capsule: CapsuleId, keyword: &Keyword) -> Vec<Trapdoor> {
        self.all_epoch_keys()
            .iter()
            .map(|k| k.trapdoor(capsule, keyword))
            .collect()
    }

    /// Serialises the state (secret): version, epoch, member state.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(STATE_ENCODED_LEN));
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.state);
        out
    }

    /// Parses [`SearchKeyState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SearchKeyState, SseError> {
        let what = "search key state";
        if bytes.len() != STATE_ENCODED_LEN {
            return Err(SseError::Encoding {
                what,
                reason: "wrong length",
            });
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(SseError::Encoding {
                what,
                reason: "unknown version",
            });
        }
        let epoch = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        if epoch >= DEFAULT_CHAIN_EPOCHS {
            return Err(SseError::Encoding {
                what,
                reason: "epoch out of range",
            });
        }
        let mut state = [0u8; 32];
        state.copy_from_slice(&bytes[5..]);
        Ok(SearchKeyState { epoch, state })
    }
}

/// The key `K_e` of one epoch.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EpochKey {
    epoch: u32,
    prf: Prf,
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl EpochKey {
    /// The epoch of this key.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// `K_{w,e}` for `keyword`.
    pub fn keyword_key(&self, keyword: &Keyword) -> KeywordKey {
        let tag = [keyword.field.tag()];
        let len = (keyword.value.len() as u32).to_be_bytes();
        let mut key = self
            .prf
            .mac(&[DS_KEYWORD, &tag, &len, keyword.value.as_bytes()]);
        let out = KeywordKey::from_bytes_array(self.epoch, &key);
        key.zeroize();
        out
    }

    /// The trapdoor for `keyword` in `capsule` at this epoch.
    pub fn trapdoor(&self, capsule: CapsuleId, keyword: &Keyword) -> Trapdoor {
        Trapdoor {
            capsule,
            key: self.keyword_key(keyword),
        }
    }

    /// The labels of one new record carrying `keywords` (duplicates count once), reserving the
    /// next counter of each keyword chain in `counters`. Labels are returned sorted, so their
    /// order says nothing about the keywords'.
    pub fn labels_for(
        &self,
        keywords: &[Keyword],
        counters: &mut dyn LabelCounter,
    ) -> Result<Vec<Label>, SseError> {
        let mut distinct: Vec<&Keyword> = keywords.iter().collect();
        distinct.sort_by(|a, b| (a.field.tag(), &a.value).cmp(&(b.field.tag(), &b.value)));
        distinct.dedup_by(|a, b| a.field == b.field && a.value == b.value);
        let keys: Vec<KeywordKey> = distinct.iter().map(|k| self.keyword_key(k)).collect();
        let refs: Vec<&KeywordKey> = keys.iter().collect();
        let counts = counters.reserve(&refs)?;
        if counts.len() != keys.len() {
            panic!("LabelCounter::reserve returned a wrong number of counters (invariant broken)");
        }
        let mut labels: Vec<Label> = keys.iter().zip(counts).map(|(k, c)| k.label(c)).collect();
        labels.sort_unstable();
        Ok(labels)
    }
}

// ---------------------------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------------------------

/// The field a keyword belongs to; fields are domain-separated in the keyword key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// A FHIR coding token `system|code`, matched exactly.
    Code,
    /// A word of text, matched case-insensitively.
    Text,
}

impl Field {
    fn tag(self) -> u8 {
        match self {
            Field::Code => 1,
            Field::Text => 2,
        }
    }

    /// The field's name (`code` or `text`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Code => "code",
            Field::Text => "text",
        }
    }
}

/// A normalised keyword: a field and a value. Its `Debug` does not show the value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keyword {
    field: Field,
    value: String,
}

impl Drop for Keyword {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyword")
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl Keyword {
    /// Normalises `raw` for `field` (see the module docs).
    pub fn new(field: Field, raw: &str) -> Result<Keyword, SseError> {
        let err = |reason| SseError::InvalidKeyword {
            field: field.name(),
            reason,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(err("contains a control character"));
        }
        let value = match field {
            Field::Code => {
                let Some((_, code)) = trimmed.rsplit_once('|') else {
                    return Err(err("a code token must be system|code"));
                };
                if code.is_empty() {
                    return Err(err("the code after '|' is empty"));
                }
                trimmed.to_owned()
            }
            Field::Text => {
                if trimmed.chars().any(char::is_whitespace) {
                    return Err(err("a text keyword must be a single word"));
                }
                trimmed.to_lowercase()
            }
        };
        if value.len() > MAX_KEYWORD_BYTES {
            return Err(err("longer than MAX_KEYWORD_BYTES"));
        }
        Ok(Keyword { field, value })
    }

    /// A `system|code` keyword.
    pub fn code(raw: &str) -> Result<Keyword, SseError> {
        Self::new(Field::Code, raw)
    }

    /// A text-word keyword.
    pub fn text(raw: &str) -> Result<Keyword, SseError> {
        Self::new(Field::Text, raw)
    }

    /// The field.
    pub fn field(&self) -> Field {
        self.field
    }

    /// The normalised value (plaintext: never log it).
    pub fn value(&self) -> &str {
        &self.value
    }
}

// ---------------------------------------------------------------------------------------------
// Keyword keys, labels, trapdoors
// ---------------------------------------------------------------------------------------------

/// `K_{w,e}`: the key of one keyword chain in one epoch. It is also the trapdoor's secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeywordKey {
    epoch: u32,
    key: [u8; 32],
    prf: Prf,
}

impl fmt::Debug for KeywordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywordKey")
            .field("epoch", &self.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl PartialEq for KeywordKey {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch && bool::from(self.key.ct_eq(&other.key))
    }
}

impl Eq for KeywordKey {}

impl KeywordKey {
    fn from_bytes_array(epoch: u32, key: &[u8; 32]) -> KeywordKey {
        KeywordKey {
            epoch,
            key: *key,
            prf: Prf::new(key),
        }
    }

    /// The epoch this key belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The raw key bytes (secret).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key)
    }

    /// The label of the `counter`-th entry of this chain. This is the search hot path.
    #[inline]
    pub fn label(&self, counter: u64) -> Label {
        let mut full = self.prf.mac(&[DS_LABEL, &counter.to_be_bytes()]);
        let mut l = [0u8; LABEL_LEN];
        l.copy_from_slice(&full[..LABEL_LEN]);
        full.zeroize();
        Label(l)
    }

    fn counter_id(&self) -> [u8; 32] {
        self.prf.mac(&[DS_COUNTER_ID])
    }

    fn counter_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.prf.mac(&[DS_COUNTER_KEY]))
    }
}

/// A 16-byte per-entry label, as stored in the index. Labels are public (they are in the
/// ledger's transactions), so ordinary comparison is fine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(pub [u8; LABEL_LEN]);

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({})", hex::encode(self.0))
    }
}

impl Label {
    /// The label bytes.
    pub fn as_bytes(&self) -> &[u8; LABEL_LEN] {
        &self.0
    }

    /// Parses a label from exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Label, SseError> {
        let arr: [u8; LABEL_LEN] = bytes.try_into().map_err(|_| SseError::Encoding {
            what: "label",
            reason: "a label is 16 bytes",
        })?;
        Ok(Label(arr))
    }
}

/// Identifier of a capsule: one (hospital, policy) search key, assigned by the ledger.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapsuleId(pub [u8; 32]);

impl fmt::Debug for CapsuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapsuleId({})", hex::encode(self.0))
    }
}

/// A trapdoor: `K_{w,e}` for one keyword, capsule and epoch. Sent to the index to search.
#[derive(Clone, PartialEq, Eq)]
pub struct Trapdoor {
    capsule: CapsuleId,
    key: KeywordKey,
}

impl fmt::Debug for Trapdoor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trapdoor")
            .field("capsule", &self.capsule)
            .field("epoch", &self.key.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Trapdoor {
    /// The capsule this trapdoor searches.
    pub fn capsule(&self) -> CapsuleId {
        self.capsule
    }

    /// The epoch this trapdoor searches.
    pub fn epoch(&self) -> u32 {
        self.key.epoch
    }

    /// The keyword key (what the index expands).
    pub fn key(&self) -> &KeywordKey {
        &self.key
    }

    /// Serialises: version, capsule id, epoch, key (secret: send only over an encrypted channel).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(TRAPDOOR_ENCODED_LEN));
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.capsule.0);
        out.extend_from_slice(&self.key.epoch.to_be_bytes());
        out.extend_from_slice(&self.key.key);
        out
    }

    /// Parses [`Trapdoor::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Trapdoor, SseError> {
        let what = "trapdoor";
        if bytes.len() != TRAPDOOR_ENCODED_LEN {
            return Err(SseError::Encoding {
                what,
                reason: "wrong length",
            });
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(SseError::Encoding {
                what,
                reason: "unknown version",
            });
        }
        let mut capsule = [0u8; 32];
        capsule.copy_from_slice(&bytes[1..33]);
        let epoch = u32::from_be_bytes(bytes[33..37].try_into().expect("4 bytes"));
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[37..69]);
        Ok(Trapdoor {
            capsule: CapsuleId(capsule),
            key: KeywordKey::from_bytes_array(epoch, &key),
        })
    }
}

/// A boolean search query over trapdoors.
#[derive(Clone, Debug)]
pub enum Query {
    /// One keyword: a record matches if any of the trapdoors' chains contains it (typically the
    /// trapdoors of one keyword for every epoch and capsule the searcher holds).
    Keyword(Vec<Trapdoor>),
    /// Every sub-query matches.
    And(Vec<Query>),
    /// At least one sub-query matches.
    Or(Vec<Query>),
}

impl Query {
    /// A keyword query over every epoch of `state` for `capsule`.
    pub fn keyword(state: &SearchKeyState, capsule: CapsuleId, keyword: &Keyword) -> Query {
        Query::Keyword(state.trapdoors(capsule, keyword))
    }
}

// ---------------------------------------------------------------------------------------------
// Capsules
// ---------------------------------------------------------------------------------------------

const DS_CAPSULE_AAD: &[u8] = b"ehr/sse/v1/capsule";

fn capsule_aad(id: &CapsuleId, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DS_CAPSULE_AAD.len() + 36);
    aad.extend_from_slice(DS_CAPSULE_AAD);
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// A capsule: the [`SearchKeyState`] of one (hospital, policy) search key at one epoch, wrapped
/// with CP-ABE under the policy. The capsule id and epoch are bound as associated data, so a
/// capsule cannot be passed off as another one's or another epoch's. Published on the ledger.
#[derive(Clone)]
pub struct Capsule {
    capsule_id: CapsuleId,
    epoch: u32,
    wrapped: crate::abe::WrappedKey,
}

impl fmt::Debug for Capsule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capsule")
            .field("capsule_id", &self.capsule_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Capsule {
    /// Wraps `state` under `policy` for `capsule_id`.
    pub fn seal<R: RngCore + CryptoRng>(
        pp: &crate::abe::PublicParams,
        policy: &crate::policy::Policy,
        capsule_id: CapsuleId,
        state: &SearchKeyState,
        rng: &mut R,
    ) -> Result<Capsule, SseError> {
        let aad = capsule_aad(&capsule_id, state.epoch);
        let wrapped = crate::abe::wrap(pp, policy, &state.to_bytes(), &aad, rng)?;
        Ok(Capsule {
            capsule_id,
            epoch: state.epoch,
            wrapped,
        })
    }

    /// Unwraps the state with a user's attribute key; `Err` if the attributes do not satisfy the
    /// policy or the capsule was tampered with.
    pub fn open(&self, key: &crate::abe::UserKey) -> Result<SearchKeyState, SseError> {
        let aad = capsule_aad(&self.capsule_id, self.epoch);
        let bytes = crate::abe::unwrap(key, &self.wrapped, &aad)?;
        let state = SearchKeyState::from_bytes(&bytes)?;
        if state.epoch != self.epoch {
            return Err(SseError::CapsuleEpochMismatch {
                header: self.epoch,
                inner: state.epoch,
            });
        }
        Ok(state)
    }

    /// The capsule id.
    pub fn capsule_id(&self) -> CapsuleId {
        self.capsule_id
    }

    /// The epoch of the wrapped state.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The access policy.
    pub fn policy(&self) -> &crate::policy::Policy {
        self.wrapped.policy()
    }

    /// Encodes: version, capsule id, epoch, wrapped key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let w = self.wrapped.to_bytes();
        let mut out = Vec::with_capacity(37 + w.len());
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.capsule_id.0);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&w);
        out
    }

    /// Decodes [`Capsule::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Capsule, SseError> {
        let what = "capsule";
        if bytes.len() < 38 {
            return Err(SseError::Encoding {
                what,
                reason: "too short",
            });
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(SseError::Encoding {
                what,
                reason: "unknown version",
            });
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[1..33]);
        let epoch = u32::from_be_bytes(bytes[33..37].try_into().expect("4 bytes"));
        if epoch >= DEFAULT_CHAIN_EPOCHS {
            return Err(SseError::Encoding {
                what,
                reason: "epoch out of range",
            });
        }
        let wrapped = crate::abe::WrappedKey::from_bytes(&bytes[37..])?;
        Ok(Capsule {
            capsule_id: CapsuleId(id),
            epoch,
            wrapped,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// Where an uploader keeps the next counter of each keyword chain.
pub trait LabelCounter {
    /// Reserves the next counter of each chain in `keys` (one per key, the keys distinct) and
    /// returns them in the same order. When this returns, the reservation is durable: the same
    /// counter is never handed out again, even after a crash.
    fn reserve(&mut self, keys: &[&KeywordKey]) -> Result<Vec<u64>, SseError>;
}

/// Counters kept in memory (tests, or uploaders that persist elsewhere). Keyed by the counter id,
/// not the keyword.
#[derive(Default)]
pub struct MemoryCounters {
    next: HashMap<[u8; 32], u64>,
}

impl fmt::Debug for MemoryCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("chains", &self.next.len())
            .finish()
    }
}

impl MemoryCounters {
    /// An empty store.
    pub fn new() -> MemoryCounters {
        MemoryCounters::default()
    }
}

impl LabelCounter for MemoryCounters {
    fn reserve(&mut self, keys: &[&KeywordKey]) -> Result<Vec<u64>, SseError> {
        let ids: Vec<[u8; 32]> = keys.iter().map(|k| k.counter_id()).collect();
        let mut out = Vec::with_capacity(keys.len());
        for id in &ids {
            let c = self.next.get(id).copied().unwrap_or(0);
            c.checked_add(1).ok_or(SseError::CounterOverflow)?;
            out.push(c);
        }
        for (id, c) in ids.into_iter().zip(&out) {
            self.next.insert(id, c + 1);
        }
        Ok(out)
    }
}

const COUNTER_MAGIC: &[u8; 8] = b"EHRCTR01";
const COUNTER_RECORD_LEN: usize = 32 + 12 + 8 + 16;

/// Counters in an append-only file: each update appends `id || nonce || AES-256-GCM(next)`,
/// `id = HMAC(K_{w,e}, "counter-id")`, under `HMAC(K_{w,e}, "counter-key")`, with the id as
/// associated data; the last record of an id wins. A torn last record (crash mid-append) is
/// dropped on open; the file is compacted on open when it holds mostly superseded records.
pub struct FileCounters {
    path: PathBuf,
    file: File,
    entries: HashMap<[u8; 32], [u8; 36]>,
    records: usize,
}

impl fmt::Debug for FileCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCounters")
            .field("chains", &self.entries.len())
            .field("records", &self.records)
            .finish()
    }
}

impl FileCounters {
    /// Opens (or creates) the counter file at `path`.
    pub fn open(path: &Path) -> Result<FileCounters, SseError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.is_empty() {
            file.write_all(COUNTER_MAGIC)?;
            file.sync_all()?;
            bytes.extend_from_slice(COUNTER_MAGIC);
        }
        if bytes.len() < COUNTER_MAGIC.len() || &bytes[..COUNTER_MAGIC.len()] != COUNTER_MAGIC {
            return Err(SseError::CorruptStore("missing or wrong file header"));
        }
        let body = &bytes[COUNTER_MAGIC.len()..];
        let whole = body.len() / COUNTER_RECORD_LEN * COUNTER_RECORD_LEN;
        let mut entries = HashMap::new();
        let mut records = 0;
        for rec in body[..whole].chunks_exact(COUNTER_RECORD_LEN) {
            let id: [u8; 32] = rec[..32].try_into().expect("32 bytes");
            let val: [u8; 36] = rec[32..].try_into().expect("36 bytes");
            entries.insert(id, val);
            records += 1;
        }
        let mut store = FileCounters {
            path: path.to_owned(),
            file,
            entries,
            records,
        };
        if whole != body.len() {
            tracing::warn!("counter store: dropping a torn trailing record");
            store.rewrite()?;
        } else if store.records > 1024 && store.records > 2 * store.entries.len() {
            store.rewrite()?;
        }
        Ok(store)
    }

    /// Rewrites the file with one record per chain (write a temporary file, fsync, rename).
    fn rewrite(&mut self) -> Result<(), SseError> {
        let tmp = self.path.with_extension("compact-tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::with_capacity(8 + self.entries.len() * COUNTER_RECORD_LEN);
            buf.extend_from_slice(COUNTER_MAGIC);
            for (id, val) in &self.entries {
                buf.extend_from_slice(id);
                buf.extend_from_slice(val);
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; not every platform can open a directory, so best effort.
            if let Ok(d) = File::open(dir) {
                d.sync_all()?;
            }
        }
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.records = self.entries.len();
        Ok(())
    }

    fn decrypt(key: &KeywordKey, id: &[u8; 32], val: &[u8; 36]) -> Result<u64, SseError> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let k = key.counter_key();
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &k[..]).expect("a 32-byte key suits AES-256-GCM"),
        );
        let nonce = Nonce::try_assume_unique_for_key(&val[..12]).expect("12-byte nonce");
        let mut buf = [0u8; 24];
        buf.copy_from_slice(&val[12..]);
        let plain = aead
            .open_in_place(nonce, Aad::from(&id[..]), &mut buf)
            .map_err(|_| SseError::CounterTampered)?;
        let v = u64::from_be_bytes(plain[..8].try_into().expect("8 bytes"));
        buf.zeroize();
        Ok(v)
    }

    fn encrypt(key: &KeywordKey, id: &[u8; 32], value: u64) -> Result<[u8; 36], SseError> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let k = key.counter_key();
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &k[..]).expect("a 32-byte key suits AES-256-GCM"),
        );
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut buf = value.to_be_bytes();
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&id[..]),
                &mut buf,
            )
            .map_err(|_| SseError::CorruptStore("AES-GCM sealing failed"))?;
        let mut out = [0u8; 36];
        out[..12].copy_from_slice(&nonce);
        out[12..20].copy_from_slice(&buf);
        out[20..].copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

impl FileCounters {
    /// Reserves the next counter of each chain in `keys` as [`LabelCounter::reserve`] does,
    /// but only writes the reservation to the file: it is not durable until the file is synced
    /// ([`Self::sync_handle`]), and the counters must not be used before. For callers that
    /// sync many reservations at once (group commit).
    pub fn reserve_unsynced(&mut self, keys: &[&KeywordKey]) -> Result<Vec<u64>, SseError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut append = Vec::with_capacity(keys.len() * COUNTER_RECORD_LEN);
        let mut updates = Vec::with_capacity(keys.len());
        for key in keys {
            let id = key.counter_id();
            let current = match self.entries.get(&id) {
                Some(val) => Self::decrypt(key, &id, val)?,
                None => 0,
            };
            let next = current.checked_add(1).ok_or(SseError::CounterOverflow)?;
            let val = Self::encrypt(key, &id, next)?;
            append.extend_from_slice(&id);
            append.extend_from_slice(&val);
            updates.push((id, val));
            out.push(current);
        }
        self.file.write_all(&append)?;
        self.records += updates.len();
        for (id, val) in updates {
            self.entries.insert(id, val);
        }
        Ok(out)
    }

    /// A handle on the counter file for syncing (`sync_data`) reservations made with
    /// [`Self::reserve_unsynced`], without holding the counters.
    pub fn sync_handle(&self) -> Result<File, SseError> {
        Ok(self.file.try_clone()?)
    }
}

impl LabelCounter for FileCounters {
    fn reserve(&mut self, keys: &[&KeywordKey]) -> Result<Vec<u64>, SseError> {
        let out = self.reserve_unsynced(keys)?;
        // Durable before anything is handed out.
        self.file.sync_data()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use sha2::{Digest, Sha256};

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    proptest! {
        #[test]
        fn prf_matches_hmac_crate(key in any::<[u8; 32]>(), msg in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let split = split.min(msg.len());
            let ours = Prf::new(&key).mac(&[&msg[..split], &msg[split..]]);
            let mut h = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            h.update(&msg);
            prop_assert_eq!(&ours[..], &h.finalize().into_bytes()[..]);
        }

        #[test]
        fn sha256_matches(msg in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ours = sha256_continue(SHA256_IV, 0, &[&msg]);
            prop_assert_eq!(&ours[..], &Sha256::digest(&msg)[..]);
        }
    }

    #[test]
    fn state_derives_earlier_epochs_only() {
        let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng(), 10).unwrap();
        let mut keys = vec![owner.epoch_key()];
        for _ in 0..5 {
            owner.rotate().unwrap();
            keys.push(owner.epoch_key());
        }
        let st = owner.state();
        assert_eq!(st.epoch(), 5);
        let kw = Keyword::text("asthma").unwrap();
        for (e, k) in keys.iter().enumerate() {
            let derived = st.epoch_key(e as u32).unwrap();
            assert_eq!(derived.keyword_key(&kw), k.keyword_key(&kw));
        }
        assert!(matches!(
            st.epoch_key(6),
            Err(SseError::EpochNotDerivable {
                requested: 6,
                held: 5
            })
        ));
        // An earlier state also cannot reach the later epoch key.
        let st3 = st.unwind_to(3).unwrap();
        assert!(st3.epoch_key(4).is_err());
        assert_eq!(
            st3.epoch_key(3).unwrap().keyword_key(&kw),
            keys[3].keyword_key(&kw)
        );
        // Epoch keys differ.
        assert_ne!(keys[0].keyword_key(&kw), keys[1].keyword_key(&kw));
        let all = st.all_epoch_keys();
        assert_eq!(all.len(), 6);
        for (a, b) in all.iter().zip(&keys) {
            assert_eq!(a.keyword_key(&kw), b.keyword_key(&kw));
        }
    }

    #[test]
    fn chain_exhausts() {
        let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng(), 3).unwrap();
        assert_eq!(owner.rotate().unwrap(), 1);
        assert_eq!(owner.rotate().unwrap(), 2);
        assert!(matches!(owner.rotate(), Err(SseError::ChainExhausted(2))));
        assert!(SearchKeyOwner::generate_with_epochs(&mut rng(), 0).is_err());
    }

    #[test]
    fn owner_and_state_round_trip() {
        let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng(), 100).unwrap();
        owner.rotate().unwrap();
        let back = SearchKeyOwner::from_bytes(&owner.to_bytes()).unwrap();
        assert_eq!(back.epoch(), 1);
        let kw = Keyword::code("http://loinc.org|1234-5").unwrap();
        assert_eq!(
            back.epoch_key().keyword_key(&kw),
            owner.epoch_key().keyword_key(&kw)
        );
        let st = SearchKeyState::from_bytes(&owner.state().to_bytes()).unwrap();
        assert_eq!(
            st.epoch_key(1).unwrap().keyword_key(&kw),
            owner.epoch_key().keyword_key(&kw)
        );
        let mut bad = owner.state().to_bytes().to_vec();
        bad[0] = 9;
        assert!(SearchKeyState::from_bytes(&bad).is_err());
        assert!(SearchKeyState::from_bytes(&bad[..10]).is_err());
        let mut bad_owner = owner.to_bytes().to_vec();
        bad_owner[5..9].copy_from_slice(&1000u32.to_be_bytes());
        assert!(SearchKeyOwner::from_bytes(&bad_owner).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let owner = SearchKeyOwner::generate(&mut rng());
        let st = owner.state();
        let seed_hex = hex::encode(owner.seed);
        let state_hex = hex::encode(st.state);
        let kw = Keyword::text("Diabetes").unwrap();
        let td = owner.epoch_key().trapdoor(CapsuleId([1; 32]), &kw);
        let key_hex = hex::encode(td.key().to_bytes());
        let all = format!(
            "{owner:?} {st:?} {:?} {kw:?} {td:?} {:?}",
            owner.epoch_key(),
            td.key()
        );
        assert!(!all.contains(&seed_hex) && !all.contains(&state_hex));
        assert!(!all.contains(&key_hex));
        assert!(!all.contains("diabetes"));
        assert!(all.contains("redacted"));
    }

    #[test]
    fn keyword_normalisation() {
        assert_eq!(Keyword::text("  Asthma\n").unwrap().value(), "asthma");
        assert_eq!(Keyword::text("ÄRZTIN").unwrap().value(), "ärztin");
        assert!(Keyword::text("two words").is_err());
        assert!(Keyword::text("   ").is_err());
        assert!(Keyword::text("a\u{0007}b").is_err());
        assert!(Keyword::text(&"x".repeat(MAX_KEYWORD_BYTES + 1)).is_err());
        assert_eq!(
            Keyword::code(" http://snomed.info/sct|73211009 ")
                .unwrap()
                .value(),
            "http://snomed.info/sct|73211009"
        );
        assert_eq!(Keyword::code("|ABC").unwrap().value(), "|ABC");
        assert!(Keyword::code("nopipe").is_err());
        assert!(Keyword::code("sys|").is_err());
        // Fields are domain-separated; codes are case-sensitive.
        let ek = SearchKeyOwner::generate(&mut rng()).epoch_key();
        let a = ek.keyword_key(&Keyword::code("s|abc").unwrap());
        let b = ek.keyword_key(&Keyword::code("s|ABC").unwrap());
        let c = ek.keyword_key(&Keyword::text("s|abc").unwrap());
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn trapdoor_round_trip_and_rejects_bad_bytes() {
        let ek = SearchKeyOwner::generate(&mut rng()).epoch_key();
        let td = ek.trapdoor(CapsuleId([3; 32]), &Keyword::text("x").unwrap());
        let back = Trapdoor::from_bytes(&td.to_bytes()).unwrap();
        assert_eq!(back, td);
        assert_eq!(back.key().label(5), td.key().label(5));
        assert!(Trapdoor::from_bytes(&td.to_bytes()[1..]).is_err());
        let mut v = td.to_bytes().to_vec();
        v[0] = 0;
        assert!(Trapdoor::from_bytes(&v).is_err());
        assert!(Label::from_slice(&[0; 15]).is_err());
    }

    #[test]
    fn labels_are_distinct_sorted_and_use_counters() {
        let ek = SearchKeyOwner::generate(&mut rng()).epoch_key();
        let kws = vec![
            Keyword::text("b").unwrap(),
            Keyword::text("a").unwrap(),
            Keyword::text("B").unwrap(),
        ];
        let mut ctr = MemoryCounters::new();
        let l1 = ek.labels_for(&kws, &mut ctr).unwrap();
        assert_eq!(l1.len(), 2, "duplicates after normalisation count once");
        assert!(l1.windows(2).all(|w| w[0] < w[1]));
        let l2 = ek.labels_for(&kws, &mut ctr).unwrap();
        let kb = ek.keyword_key(&kws[0]);
        assert!(l1.contains(&kb.label(0)) && l2.contains(&kb.label(1)));
        assert!(l1.iter().all(|l| !l2.contains(l)));
    }

    #[test]
    fn file_counters_persist_encrypted_and_survive_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters");
        let ek = SearchKeyOwner::generate(&mut rng()).epoch_key();
        let ka = ek.keyword_key(&Keyword::text("alpha").unwrap());
        let kb = ek.keyword_key(&Keyword::text("beta").unwrap());
        {
            let mut s = FileCounters::open(&path).unwrap();
            assert_eq!(s.reserve(&[&ka, &kb]).unwrap(), vec![0, 0]);
            assert_eq!(s.reserve(&[&ka]).unwrap(), vec![1]);
        }
        let raw = std::fs::read(&path).unwrap();
        for secret in [&ka.key[..], &kb.key[..], b"alpha", b"beta"] {
            assert!(!raw.windows(secret.len()).any(|w| w == secret));
        }
        // Torn append: half a record at the end is dropped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xAA; 20]).unwrap();
        drop(f);
        {
            let mut s = FileCounters::open(&path).unwrap();
            assert_eq!(s.reserve(&[&ka, &kb]).unwrap(), vec![2, 1]);
        }
        // Tampering with a value is detected when that chain is used.
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let mut s = FileCounters::open(&path).unwrap();
        let r = s.reserve(&[&ka]);
        let r2 = s.reserve(&[&kb]);
        assert!(
            matches!(r, Err(SseError::CounterTampered))
                || matches!(r2, Err(SseError::CounterTampered))
        );
        // A wrong header is refused.
        std::fs::write(&path, b"garbage!").unwrap();
        assert!(matches!(
            FileCounters::open(&path),
            Err(SseError::CorruptStore(_))
        ));
    }

    #[test]
    fn file_counters_compact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters");
        let ek = SearchKeyOwner::generate(&mut rng()).epoch_key();
        let ka = ek.keyword_key(&Keyword::text("alpha").unwrap());
        {
            let mut s = FileCounters::open(&path).unwrap();
            for i in 0..1100u64 {
                assert_eq!(s.reserve(&[&ka]).unwrap(), vec![i]);
            }
        }
        let mut s = FileCounters::open(&path).unwrap();
        assert_eq!(s.records, 1);
        assert_eq!(s.reserve(&[&ka]).unwrap(), vec![1100]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            8 + 2 * COUNTER_RECORD_LEN
        );
    }
}
