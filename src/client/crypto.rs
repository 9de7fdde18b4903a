//! Client-side cryptography: open the capsules the user's attributes satisfy, turn keywords
//! into trapdoors and the node's JSON query, and unwrap and open a record the node released.
//!
//! # Conventions shared with the node
//! - A record is sealed ([`ehr_storage::seal`]) with the capsule id's 32 bytes as the context
//!   ([`seal_context`]).
//! - Its data key is wrapped with CP-ABE under the capsule's policy with the associated data
//!   [`record_key_aad`]: `"ehr/record-key/v1" || capsule id || CID bytes`, so a wrapped key
//!   cannot be moved to another record or capsule.
//! - A user's attribute key is requested for the user id [`abe_user_id`]: the participant id's
//!   32 bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::tx::ParticipantId;
use ehr_search::abe::UserKey;
use ehr_search::sse::{Capsule, CapsuleId, Keyword, Query, SearchKeyState};
use ehr_storage::seal::{DataKey, SealContext};
use zeroize::Zeroizing;

use super::error::ClientError;

/// Domain separation of the data key's associated data.
pub const RECORD_KEY_AAD_PREFIX: &[u8] = b"ehr/record-key/v1";

/// The seal context of records indexed under `capsule`.
pub fn seal_context(capsule: &CapsuleId) -> SealContext {
    SealContext::new(capsule.0.to_vec())
}

/// The associated data binding a record's CP-ABE wrapped data key to its capsule and CID (the
/// node's definition, [`crate::node::upload::record_key_aad`]: one definition, so the two sides
/// cannot drift).
pub fn record_key_aad(capsule: &CapsuleId, cid: &[u8]) -> Vec<u8> {
    crate::node::upload::record_key_aad(&capsule.0, cid)
}

/// The user id attribute keys are issued for.
pub fn abe_user_id(participant: &ParticipantId) -> Vec<u8> {
    participant.0.to_vec()
}

/// Parses a 64-hex-digit capsule id.
pub fn parse_capsule_id(text: &str) -> Result<CapsuleId, String> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut id)
        .map_err(|_| "must be 64 hex digits (a capsule id)".to_owned())?;
    Ok(CapsuleId(id))
}

/// A capsule as listed by the node (`GET /v1/capsules`): its id and encoded [`Capsule`].
#[derive(Debug, Clone)]
pub struct ListedCapsule {
    /// The capsule id the node listed.
    pub id: CapsuleId,
    /// The [`Capsule::to_bytes`] encoding.
    pub bytes: Vec<u8>,
}

/// A capsule the user opened: the search key state of its newest epoch.
#[derive(Debug)]
pub struct OpenedCapsule {
    /// The capsule.
    pub id: CapsuleId,
    /// Its search key state (derives this and every earlier epoch).
    pub state: SearchKeyState,
}

/// What happened to the listed capsules.
#[derive(Debug, Default)]
pub struct CapsuleReport {
    /// Capsules opened.
    pub opened: Vec<OpenedCapsule>,
    /// Capsules whose policy the user's attributes do not satisfy.
    pub not_satisfied: usize,
    /// Capsules that failed to decode or decrypt (tampered or inconsistent): id and reason.
    pub invalid: Vec<(CapsuleId, String)>,
}

/// Opens every listed capsule whose policy `key` satisfies. When a capsule is listed several
/// times (one entry per epoch), the newest epoch wins (it derives the earlier ones).
pub fn open_capsules(listed: &[ListedCapsule], key: &UserKey) -> CapsuleReport {
    let mut report = CapsuleReport::default();
    let mut newest: BTreeMap<[u8; 32], OpenedCapsule> = BTreeMap::new();
    for l in listed {
        let capsule = match Capsule::from_bytes(&l.bytes) {
            Ok(c) => c,
            Err(e) => {
                report.invalid.push((l.id, e.to_string()));
                continue;
            }
        };
        if capsule.capsule_id() != l.id {
            report
                .invalid
                .push((l.id, "the encoded capsule names another capsule id".into()));
            continue;
        }
        if !capsule.policy().is_satisfied_by(key.attributes()) {
            report.not_satisfied += 1;
            continue;
        }
        match capsule.open(key) {
            Ok(state) => {
                let keep = newest
                    .get(&l.id.0)
                    .is_none_or(|o| o.state.epoch() < state.epoch());
                if keep {
                    newest.insert(l.id.0, OpenedCapsule { id: l.id, state });
                }
            }
            Err(e) => report.invalid.push((l.id, e.to_string())),
        }
    }
    report.opened = newest.into_values().collect();
    report
}

/// A keyword the user searches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeywordArg {
    /// A FHIR coding token `system|code`.
    Code(String),
    /// A word of text.
    Text(String),
}

impl KeywordArg {
    fn keyword(&self) -> Result<Keyword, ClientError> {
        match self {
            KeywordArg::Code(c) => Keyword::code(c).map_err(|e| {
                ClientError::input("keyword", format!("not a `system|code` token: {e}"))
            }),
            KeywordArg::Text(t) => Keyword::text(t)
                .map_err(|e| ClientError::input("--text", format!("not a single word: {e}"))),
        }
    }
}

/// How several keywords combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Every keyword must match.
    And,
    /// Any keyword may match.
    Or,
}

/// Builds the query: per keyword, the trapdoors of every epoch of every opened capsule (one
/// keyword node), combined with `combine` when there are several.
pub fn build_query(
    opened: &[OpenedCapsule],
    keywords: &[KeywordArg],
    combine: Combine,
) -> Result<Query, ClientError> {
    if keywords.is_empty() {
        return Err(ClientError::input("keyword", "give at least one keyword"));
    }
    if opened.is_empty() {
        return Err(ClientError::input(
            "capsules",
            "your attribute key opens no capsule: there is nothing you may search",
        ));
    }
    let mut nodes = Vec::with_capacity(keywords.len());
    for k in keywords {
        let kw = k.keyword()?;
        let trapdoors = opened
            .iter()
            .flat_map(|o| o.state.trapdoors(o.id, &kw))
            .collect();
        nodes.push(Query::Keyword(trapdoors));
    }
    Ok(if nodes.len() == 1 {
        nodes.pop().expect("one node")
    } else {
        match combine {
            Combine::And => Query::And(nodes),
            Combine::Or => Query::Or(nodes),
        }
    })
}

/// The JSON of `POST /v1/search`'s `query` for `q`:
/// `{"keyword":[b64url trapdoor,...]} | {"and":[..]} | {"or":[..]}`. It holds trapdoors
/// (secret keys of keyword chains), so it is built in a buffer that is wiped on drop.
pub fn query_json(q: &Query) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    write_query(q, &mut out);
    out
}

fn write_query(q: &Query, out: &mut String) {
    let (name, children) = match q {
        Query::Keyword(ts) => {
            out.push_str("{\"keyword\":[");
            for (i, t) in ts.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                let b = Zeroizing::new(B64.encode(&*t.to_bytes()));
                out.push_str(&b);
                out.push('"');
            }
            out.push_str("]}");
            return;
        }
        Query::And(c) => ("and", c),
        Query::Or(c) => ("or", c),
    };
    let _ = write!(out, "{{\"{name}\":[");
    for (i, c) in children.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_query(c, out);
    }
    out.push_str("]}");
}

/// The body of `POST /v1/search`.
pub fn search_body(q: &Query, limit: usize, cursor: Option<&str>) -> Zeroizing<String> {
    let query = query_json(q);
    let cursor = match cursor {
        Some(c) => serde_json::to_string(c).expect("strings serialise"),
        None => "null".to_owned(),
    };
    Zeroizing::new(format!(
        "{{\"query\":{},\"limit\":{limit},\"cursor\":{cursor}}}",
        &*query
    ))
}

/// Maps a record's FHIR keywords to search keywords exactly as the node does for the uploads it
/// seals itself (the same function: [`crate::node::upload::search_keywords`]).
pub use crate::node::upload::search_keywords;

/// The keyword keys `K_{w,e}` of `keywords` at `state`'s current epoch, de-duplicated and
/// sorted (so their order says nothing about the keywords), base64url and comma-separated:
/// the `ehr-keyword-keys` header of a pre-sealed upload. The node derives the labels from
/// them; it learns these keys but not the keywords.
pub fn keyword_keys_header(state: &SearchKeyState, keywords: &[Keyword]) -> Zeroizing<String> {
    let ek = state
        .epoch_key(state.epoch())
        .expect("invariant: a state derives its own epoch's key");
    let mut keys: Vec<Zeroizing<[u8; 32]>> = keywords
        .iter()
        .map(|k| ek.keyword_key(k).to_bytes())
        .collect();
    keys.sort_unstable_by(|a, b| a[..].cmp(&b[..]));
    keys.dedup_by(|a, b| a[..] == b[..]);
    let mut out = Zeroizing::new(String::with_capacity(keys.len() * 44));
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Zeroizing::new(B64.encode(&k[..])));
    }
    out
}

/// How the node released a record's data key (`ehr-key-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Wrapped with CP-ABE under the capsule's policy; the user's attribute key opens it.
    Abe,
    /// Rewrapped for this participant by a grant; the signing key opens it.
    Grant,
}

impl KeyKind {
    /// Parses the header value.
    pub fn parse(s: &str) -> Result<KeyKind, ClientError> {
        match s.trim() {
            "abe" => Ok(KeyKind::Abe),
            "grant" => Ok(KeyKind::Grant),
            other => Err(ClientError::bad_response(
                "ehr-key-kind header",
                format!("unknown key kind `{other}` (expected abe or grant)"),
            )),
        }
    }
}

/// Unwraps a record's data key released by the node.
pub fn unwrap_data_key(
    kind: KeyKind,
    wrapped: &[u8],
    capsule: &CapsuleId,
    cid: &[u8],
    abe_key: Option<&UserKey>,
    signing_key: &ed25519_dalek::SigningKey,
) -> Result<DataKey, ClientError> {
    let raw: Zeroizing<Vec<u8>> = match kind {
        KeyKind::Abe => {
            let key = abe_key.ok_or_else(|| {
                ClientError::input(
                    "--identity",
                    "has no attribute key: run `ehr keygen --abe` first",
                )
            })?;
            let wk = crate::recordkey::Encapsulated::parse(wrapped)
                .map_err(|e| ClientError::bad_response("ehr-wrapped-key header", e.to_string()))?;
            wk.open(key, &capsule.0, cid).map_err(|e| {
                ClientError::crypto(
                    "unwrapping the record's data key with your attribute key",
                    e.to_string(),
                )
            })?
        }
        KeyKind::Grant => grant_unwrap(signing_key, cid, wrapped)?,
    };
    DataKey::from_slice(&raw)
        .map_err(|e| ClientError::crypto("the record's data key", e.to_string()))
}

/// Opens a data key rewrapped for this participant by a grant ([`crate::keywrap`]).
fn grant_unwrap(
    signing_key: &ed25519_dalek::SigningKey,
    cid: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    crate::keywrap::unwrap_with(signing_key, cid, wrapped).map_err(|e| {
        ClientError::crypto(
            "unwrapping the record's data key granted to you",
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_search::abe;
    use ehr_search::index::{Index, IndexConfig, IndexEvent};
    use ehr_search::policy::Policy;
    use ehr_search::sse::{MemoryCounters, SearchKeyOwner, Trapdoor};
    use rand::SeedableRng as _;
    use rand_chacha::ChaCha20Rng;

    /// Parses the query JSON back the way a server would (for the round-trip tests).
    fn parse_query(v: &serde_json::Value) -> Query {
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1);
        let (k, v) = obj.iter().next().unwrap();
        let arr = v.as_array().unwrap();
        match k.as_str() {
            "keyword" => Query::Keyword(
                arr.iter()
                    .map(|t| {
                        Trapdoor::from_bytes(&B64.decode(t.as_str().unwrap()).unwrap()).unwrap()
                    })
                    .collect(),
            ),
            "and" => Query::And(arr.iter().map(parse_query).collect()),
            "or" => Query::Or(arr.iter().map(parse_query).collect()),
            other => panic!("unknown node {other}"),
        }
    }

    struct World {
        pp: abe::PublicParams,
        owner: SearchKeyOwner,
        capsule: CapsuleId,
        policy: Policy,
        rng: ChaCha20Rng,
    }

    fn world() -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let (pp, _msk) = abe::setup(&mut rng);
        World {
            pp,
            owner: SearchKeyOwner::generate_with_epochs(&mut rng, 16).unwrap(),
            capsule: CapsuleId([7; 32]),
            policy: Policy::parse("role:researcher AND irb:study-42").unwrap(),
            rng,
        }
    }

    fn user(pp_seed: u64, attrs: &[&str]) -> (abe::PublicParams, UserKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(pp_seed);
        let (pp, msk) = abe::setup(&mut rng);
        let k = abe::keygen(&pp, &msk, &[1; 32], attrs, &mut rng).unwrap();
        (pp, k)
    }

    #[test]
    fn trapdoors_find_the_labels_the_uploader_made_in_every_epoch() {
        // One authority for both sides: a world whose params the user key matches.
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (pp, msk) = abe::setup(&mut rng);
        let mut w = world();
        w.pp = pp;
        let key = abe::keygen(
            &w.pp,
            &msk,
            &[1; 32],
            ["role:researcher", "irb:study-42"],
            &mut rng,
        )
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
        let mut counters = MemoryCounters::new();
        let flu = Keyword::code("http://loinc.org|1234-5").unwrap();
        let cough = Keyword::text("cough").unwrap();
        // Records: (cid, epoch, keywords). Epoch rotates between uploads.
        let plan: [(&[u8], u32, Vec<Keyword>); 4] = [
            (b"cid-a", 0, vec![flu.clone()]),
            (b"cid-b", 0, vec![flu.clone(), cough.clone()]),
            (b"cid-c", 1, vec![cough.clone()]),
            (b"cid-d", 2, vec![flu.clone(), cough.clone()]),
        ];
        for (h, (cid, epoch, kws)) in plan.iter().enumerate() {
            while w.owner.epoch() < *epoch {
                w.owner.rotate().unwrap();
            }
            let labels = w.owner.epoch_key().labels_for(kws, &mut counters).unwrap();
            index
                .apply(&IndexEvent::RecordAdded {
                    cid: cid.to_vec(),
                    capsule_id: w.capsule,
                    epoch: *epoch,
                    height: h as u64 + 1,
                    labels,
                })
                .unwrap();
        }
        index.commit().unwrap();

        let sealed =
            Capsule::seal(&w.pp, &w.policy, w.capsule, &w.owner.state(), &mut w.rng).unwrap();
        // An older epoch of the same capsule is listed too (after the newest): the newest wins.
        let old = SearchKeyOwner::from_bytes(&w.owner.to_bytes())
            .unwrap()
            .state()
            .unwind_to(1)
            .unwrap();
        let older = Capsule::seal(&w.pp, &w.policy, w.capsule, &old, &mut w.rng).unwrap();
        let listed = vec![
            ListedCapsule {
                id: w.capsule,
                bytes: sealed.to_bytes(),
            },
            ListedCapsule {
                id: w.capsule,
                bytes: older.to_bytes(),
            },
        ];
        let report = open_capsules(&listed, &key);
        assert_eq!(report.opened.len(), 1);
        assert_eq!(report.opened[0].state.epoch(), 2);

        let run = |kws: &[KeywordArg], c: Combine| -> Vec<Vec<u8>> {
            let q = build_query(&report.opened, kws, c).unwrap();
            let body: serde_json::Value =
                serde_json::from_str(&search_body(&q, 100, None)).unwrap();
            assert_eq!(body["limit"], 100);
            let parsed = parse_query(&body["query"]);
            let mut cids: Vec<Vec<u8>> = index
                .search(&parsed, None, 100)
                .unwrap()
                .hits
                .into_iter()
                .map(|h| h.cid)
                .collect();
            cids.sort();
            cids
        };
        let code = KeywordArg::Code("http://loinc.org|1234-5".into());
        let word = KeywordArg::Text("COUGH".into());
        let v = |xs: &[&[u8]]| xs.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            run(std::slice::from_ref(&code), Combine::And),
            v(&[b"cid-a", b"cid-b", b"cid-d"])
        );
        assert_eq!(
            run(std::slice::from_ref(&word), Combine::And),
            v(&[b"cid-b", b"cid-c", b"cid-d"])
        );
        assert_eq!(
            run(&[code.clone(), word.clone()], Combine::And),
            v(&[b"cid-b", b"cid-d"])
        );
        assert_eq!(
            run(&[code, word], Combine::Or),
            v(&[b"cid-a", b"cid-b", b"cid-c", b"cid-d"])
        );
        assert!(run(&[KeywordArg::Text("fever".into())], Combine::And).is_empty());
    }

    #[test]
    fn capsules_the_key_does_not_satisfy_are_skipped_and_tampered_ones_reported() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (pp, msk) = abe::setup(&mut rng);
        let mut w = world();
        let key = abe::keygen(&pp, &msk, &[1; 32], ["role:researcher"], &mut rng).unwrap();
        let other: Policy = Policy::parse("role:researcher").unwrap();
        let a = Capsule::seal(
            &pp,
            &w.policy,
            CapsuleId([1; 32]),
            &w.owner.state(),
            &mut w.rng,
        )
        .unwrap();
        let b = Capsule::seal(
            &pp,
            &other,
            CapsuleId([2; 32]),
            &w.owner.state(),
            &mut w.rng,
        )
        .unwrap();
        let mut tampered = b.to_bytes();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let listed = vec![
            ListedCapsule {
                id: CapsuleId([1; 32]),
                bytes: a.to_bytes(),
            },
            ListedCapsule {
                id: CapsuleId([2; 32]),
                bytes: b.to_bytes(),
            },
            ListedCapsule {
                id: CapsuleId([3; 32]),
                bytes: b.to_bytes(),
            },
            ListedCapsule {
                id: CapsuleId([2; 32]),
                bytes: tampered,
            },
            ListedCapsule {
                id: CapsuleId([4; 32]),
                bytes: vec![1, 2, 3],
            },
        ];
        let r = open_capsules(&listed, &key);
        assert_eq!(r.opened.len(), 1);
        assert_eq!(r.opened[0].id, CapsuleId([2; 32]));
        assert_eq!(r.not_satisfied, 1);
        assert_eq!(r.invalid.len(), 3, "{:?}", r.invalid);
        // With nothing opened, a query is an input error that says why.
        let err = build_query(&[], &[KeywordArg::Text("x".into())], Combine::And).unwrap_err();
        assert!(err.to_string().contains("opens no capsule"));
    }

    #[test]
    fn bad_keywords_are_input_errors() {
        let opened = vec![OpenedCapsule {
            id: CapsuleId([1; 32]),
            state: SearchKeyOwner::generate_with_epochs(&mut ChaCha20Rng::seed_from_u64(1), 4)
                .unwrap()
                .state(),
        }];
        for k in [
            KeywordArg::Code("no-bar".into()),
            KeywordArg::Text("two words".into()),
        ] {
            let e = build_query(&opened, &[k], Combine::And).unwrap_err();
            assert_eq!(e.exit_code(), 1, "{e}");
        }
        assert!(build_query(&opened, &[], Combine::Or).is_err());
    }

    #[test]
    fn a_record_sealed_and_wrapped_like_the_node_does_decrypts() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let (pp, msk) = abe::setup(&mut rng);
        let policy: Policy = Policy::parse("role:researcher AND irb:study-42").unwrap();
        let capsule = CapsuleId([3; 32]);
        let cid = b"\x01\x55\x12\x20fake-cid-bytes".to_vec();
        let plaintext: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let dk = DataKey::generate().unwrap();
        let sealed = ehr_storage::seal::seal(&dk, &seal_context(&capsule), &plaintext).unwrap();
        let wrapped = abe::wrap(
            &pp,
            &policy,
            dk.expose_secret(),
            &record_key_aad(&capsule, &cid),
            &mut rng,
        )
        .unwrap()
        .to_bytes();
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let good = abe::keygen(
            &pp,
            &msk,
            &[1; 32],
            ["role:researcher", "irb:study-42"],
            &mut rng,
        )
        .unwrap();
        let got =
            unwrap_data_key(KeyKind::Abe, &wrapped, &capsule, &cid, Some(&good), &sk).unwrap();
        let opened = ehr_storage::seal::open(&got, &seal_context(&capsule), &sealed).unwrap();
        assert_eq!(*opened, plaintext);

        // Another CID or capsule, a key without the attribute, a flipped bit: all refused.
        assert!(
            unwrap_data_key(KeyKind::Abe, &wrapped, &capsule, b"other", Some(&good), &sk).is_err()
        );
        assert!(
            unwrap_data_key(
                KeyKind::Abe,
                &wrapped,
                &CapsuleId([4; 32]),
                &cid,
                Some(&good),
                &sk
            )
            .is_err()
        );
        let weak = abe::keygen(&pp, &msk, &[1; 32], ["role:researcher"], &mut rng).unwrap();
        let e =
            unwrap_data_key(KeyKind::Abe, &wrapped, &capsule, &cid, Some(&weak), &sk).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let mut flipped = wrapped.clone();
        let n = flipped.len() - 5;
        flipped[n] ^= 0x40;
        assert!(unwrap_data_key(KeyKind::Abe, &flipped, &capsule, &cid, Some(&good), &sk).is_err());
        let e = unwrap_data_key(KeyKind::Abe, &wrapped, &capsule, &cid, None, &sk).unwrap_err();
        assert!(e.to_string().contains("keygen --abe"));
        // A user key of other parameters cannot open it either.
        let (_, stranger) = user(99, &["role:researcher", "irb:study-42"]);
        assert!(
            unwrap_data_key(KeyKind::Abe, &wrapped, &capsule, &cid, Some(&stranger), &sk).is_err()
        );
        // The seal context is the capsule: another capsule's context fails to open.
        assert!(
            ehr_storage::seal::open(&got, &seal_context(&CapsuleId([4; 32])), &sealed).is_err()
        );
    }

    #[test]
    fn a_key_rewrapped_for_a_grantee_opens_only_for_that_grantee() {
        let grantee = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let cid = b"\x01\x55\x12\x20grant-cid".to_vec();
        let dk = DataKey::generate().unwrap();
        let wrapped = crate::keywrap::wrap_for(
            &grantee.verifying_key().to_bytes(),
            &cid,
            dk.expose_secret(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let c = CapsuleId([1; 32]);
        let got = unwrap_data_key(KeyKind::Grant, &wrapped, &c, &cid, None, &grantee).unwrap();
        assert_eq!(got.expose_secret(), dk.expose_secret());
        assert!(unwrap_data_key(KeyKind::Grant, &wrapped, &c, &cid, None, &other).is_err());
        assert!(
            unwrap_data_key(KeyKind::Grant, &wrapped, &c, b"\x01other", None, &grantee).is_err()
        );
    }

    #[test]
    fn keyword_keys_give_the_labels_the_owner_would_make() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng, 8).unwrap();
        owner.rotate().unwrap();
        let kws = search_keywords(&[
            crate::fhir::Keyword::new("Observation.code", "http://loinc.org|4548-4"),
            crate::fhir::Keyword::new("Observation.code:text", "Hemoglobin A1c"),
            crate::fhir::Keyword::new("_type", "Observation"),
            crate::fhir::Keyword::new("Observation.code", "http://loinc.org|4548-4"),
        ]);
        assert_eq!(kws.len(), 5);
        let header = keyword_keys_header(&owner.state(), &kws);
        let keys: Vec<Vec<u8>> = header.split(',').map(|k| B64.decode(k).unwrap()).collect();
        assert_eq!(keys.len(), 4, "duplicates count once");
        // The labels the node derives from the keys (counter 0) are the owner's labels.
        let mut from_keys: Vec<[u8; 16]> = keys
            .iter()
            .map(|k| {
                let mut t = vec![1u8];
                t.extend_from_slice(&[0; 32]);
                t.extend_from_slice(&1u32.to_be_bytes());
                t.extend_from_slice(k);
                Trapdoor::from_bytes(&t).unwrap().key().label(0).0
            })
            .collect();
        from_keys.sort();
        let mut owners: Vec<[u8; 16]> = owner
            .epoch_key()
            .labels_for(&kws, &mut MemoryCounters::new())
            .unwrap()
            .into_iter()
            .map(|l| l.0)
            .collect();
        owners.sort();
        assert_eq!(from_keys, owners);
    }

    #[test]
    fn key_kind_header_is_strict() {
        assert_eq!(KeyKind::parse("abe").unwrap(), KeyKind::Abe);
        assert_eq!(KeyKind::parse("grant").unwrap(), KeyKind::Grant);
        assert!(KeyKind::parse("ABE").is_err());
    }
}
