//! Fuzz harnesses (bounded property tests) for the node's decoders: FHIR keyword extraction
//! and validation on arbitrary JSON and NDJSON, and the ledger network's frame and handshake
//! decoding (`ledger_net::frame`, `ledger_net::handshake::accept`).
//!
//! Seeds: the committed FHIR fixtures (`tests/fixtures/fhir/`) plus edge-case resources in
//! `fuzz/corpus/fhir_json/`, and real frames and hellos in `fuzz/corpus/net_*` (written by
//! [`corpus_is_committed`] under `EHR_FUZZ_REGEN=1`). Properties: no panic; extraction is
//! deterministic, agrees between bytes and parsed values and between NDJSON and its lines,
//! `Skip` only ever adds to `Refuse`, and every keyword is well formed; frames are bounded and
//! round-trip; a handshake succeeds only for a well-formed hello from a known replica signed
//! by that replica. `EHR_FUZZ_CASES=<n>` multiplies the case counts.

#[path = "../fuzz/mutate.rs"]
mod mutate;

use std::sync::Arc;

use ed25519_dalek::{Signer as _, SigningKey};
use ehr::fhir::{
    ExtractConfig, InputFormat, MAX_TEXT_CHARS, MAX_TOKEN_BYTES, OnMalformed, extract,
    extract_value,
};
use ehr::ledger_net::frame::{Kind, read_frame, read_typed, write_frame, write_typed};
use ehr::ledger_net::handshake::{Identity, ValidatorSet, accept, dial};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// FHIR
// ---------------------------------------------------------------------------------------------

/// Edge cases the fixtures lack: nested Bundles, security labels, identifiers, primitive codes,
/// quoted systems, empty and whitespace values.
fn fhir_edge_cases() -> Vec<(String, Vec<u8>)> {
    let docs: Vec<(&str, Value)> = vec![
        (
            "nested-bundle",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"resource": {"resourceType": "Bundle", "type": "collection", "entry": [
                    {"resource": {"resourceType": "Condition",
                        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006",
                                             "display": "Diabetes mellitus type 2"}],
                                 "text": "  Type 2   DIABETES "}}}
                ]}},
                {"resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                    "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                             "tag": [{"code": "no-system"}]}}}
            ]}),
        ),
        (
            "patient",
            json!({"resourceType": "Patient", "gender": "female", "active": true,
                   "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
                                  {"value": "no-system"}],
                   "deceasedBoolean": false}),
        ),
        (
            "medication-request",
            json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                   "medicationCodeableConcept": {"coding": [
                       {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975"}]}}),
        ),
        (
            "unindexed-type",
            json!({"resourceType": "Basic", "code": {"text": "x"}}),
        ),
    ];
    docs.into_iter()
        .map(|(n, v)| (format!("{n}.json"), serde_json::to_vec_pretty(&v).unwrap()))
        .collect()
}

/// Every JSON seed: the committed fixtures and the edge cases.
fn fhir_seeds() -> Arc<Vec<Vec<u8>>> {
    static S: std::sync::OnceLock<Arc<Vec<Vec<u8>>>> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let root = mutate::manifest_dir().join("tests/fixtures/fhir");
        let mut v: Vec<Vec<u8>> = mutate::load_dir(&root.join("r4-examples"))
            .into_iter()
            .chain(mutate::load_dir(&root.join("carebundle")))
            .filter(|(n, _)| n.ends_with(".json"))
            .map(|(_, b)| b)
            .collect();
        v.extend(mutate::corpus("fhir_json").into_iter().map(|(_, b)| b));
        assert!(v.len() >= 10, "FHIR seeds missing");
        Arc::new(v)
    })
    .clone()
}

fn configs() -> [ExtractConfig; 2] {
    let small = ExtractConfig {
        max_resources: 50,
        max_keywords: 200,
        ..ExtractConfig::default()
    };
    [
        small.clone(),
        ExtractConfig {
            on_malformed: OnMalformed::Skip,
            ..small
        },
    ]
}

/// The properties every input must satisfy.
fn check_fhir(input: &[u8], format: InputFormat) -> Result<(), TestCaseError> {
    let [refuse, skip] = configs();
    let r = extract(input, format, &refuse);
    let s = extract(input, format, &skip);
    // Deterministic.
    prop_assert_eq!(&r, &extract(input, format, &refuse));
    if let Ok(r) = &r {
        // Skip never refuses what Refuse accepts, and then finds the same keywords.
        prop_assert_eq!(r.skipped, 0);
        let s = s
            .as_ref()
            .map_err(|e| TestCaseError::fail(format!("Skip refused what Refuse accepted: {e}")))?;
        prop_assert_eq!(&s.keywords, &r.keywords);
        prop_assert_eq!(s.skipped, 0);
    }
    if let Ok(s) = &s {
        if s.skipped == 0 {
            prop_assert!(
                r.is_ok(),
                "Refuse refused what Skip accepted without skipping"
            );
        }
        prop_assert!(s.keywords.len() <= skip.max_keywords);
        prop_assert!(s.resources <= skip.max_resources);
        for k in &s.keywords {
            prop_assert!(!k.field.is_empty() && !k.value.is_empty());
            if k.field.ends_with(":text") {
                // Normalised text: FHIR strings hold no C0 control but tab, CR and LF, and
                // normalisation folds those to spaces.
                prop_assert!(
                    !k.value.chars().any(|c| c < ' '),
                    "control char in a text keyword"
                );
                prop_assert!(k.value.chars().count() <= MAX_TEXT_CHARS);
                prop_assert_eq!(k.value.trim(), k.value.as_str());
            } else {
                prop_assert!(
                    !k.value.chars().any(char::is_control),
                    "control char in a token"
                );
                prop_assert!(k.value.len() <= 2 * MAX_TOKEN_BYTES + 1);
            }
        }
    }
    // For one document, bytes and the parsed value agree.
    if format == InputFormat::Json
        && let Ok(v) = serde_json::from_slice::<Value>(input)
    {
        let by_value = extract_value(&v, &refuse);
        match (&r, &by_value) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "bytes {:?} but value {:?}", a.is_ok(), b.is_ok()),
        }
    }
    Ok(())
}

/// A JSON value built from FHIR's own vocabulary, so random trees reach the token walkers.
fn fhir_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("resourceType"),
        Just("code"),
        Just("coding"),
        Just("system"),
        Just("display"),
        Just("text"),
        Just("value"),
        Just("identifier"),
        Just("entry"),
        Just("resource"),
        Just("meta"),
        Just("security"),
        Just("tag"),
        Just("category"),
        Just("status"),
        Just("gender"),
        Just("valueCodeableConcept"),
        Just("component"),
    ];
    let rtype = prop_oneof![
        Just("Bundle"),
        Just("Observation"),
        Just("Condition"),
        Just("Patient"),
        Just("Encounter"),
        Just("MedicationRequest"),
        Just("Procedure"),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        rtype.clone().prop_map(|t| Value::String(t.into())),
        "[a-z|:/.0-9 -]{0,12}".prop_map(Value::String),
        "\\PC{0,8}".prop_map(Value::String),
        Just(Value::String("x".repeat(1100))),
        Just(Value::String(" padded ".into())),
        Just(Value::String("a\u{7}b".into())),
    ];
    let tree = leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    });
    (rtype, tree).prop_map(|(t, v)| match v {
        Value::Object(mut m) => {
            m.insert("resourceType".into(), Value::String(t.into()));
            Value::Object(m)
        }
        other => json!({"resourceType": t, "code": other}),
    })
}

/// Replaces a random node of a fixture with a random value (a type confusion at any depth).
fn graft(node: &mut Value, path: &[usize], new: Value) {
    if let Some((&step, rest)) = path.split_first() {
        match node {
            Value::Array(a) if !a.is_empty() => {
                let i = step % a.len();
                return graft(&mut a[i], rest, new);
            }
            Value::Object(m) if !m.is_empty() => {
                let i = step % m.len();
                let child = m.values_mut().nth(i).expect("index within length");
                return graft(child, rest, new);
            }
            _ => {}
        }
    }
    *node = new;
}

fn grafted() -> impl Strategy<Value = Vec<u8>> {
    let seeds = fhir_seeds();
    (
        any::<proptest::sample::Index>(),
        proptest::collection::vec(any::<usize>(), 0..8),
        fhir_value(),
    )
        .prop_map(move |(i, path, new)| {
            let mut doc: Value = serde_json::from_slice(&seeds[i.index(seeds.len())]).unwrap();
            graft(&mut doc, &path, new);
            serde_json::to_vec(&doc).unwrap()
        })
}

proptest! {
    #![proptest_config(mutate::config(1024))]

    /// Byte-level mutations of real resources and Bundles (JSON).
    #[test]
    fn fhir_mutated_json(input in mutate::inputs(fhir_seeds(), 256 * 1024)) {
        check_fhir(&input, InputFormat::Json)?;
    }

    /// Structure-aware: a random FHIR-shaped value grafted anywhere into a real resource.
    #[test]
    fn fhir_grafted_values(input in grafted()) {
        check_fhir(&input, InputFormat::Json)?;
    }

    /// Random FHIR-shaped resources.
    #[test]
    fn fhir_random_resources(v in fhir_value()) {
        check_fhir(&serde_json::to_vec(&v).unwrap(), InputFormat::Json)?;
    }

    /// NDJSON: mutated lines; and an input of valid lines finds the union of their keywords.
    #[test]
    fn fhir_ndjson(
        lines in proptest::collection::vec(
            prop_oneof![grafted(), fhir_value().prop_map(|v| serde_json::to_vec(&v).unwrap())],
            1..5,
        ),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut joined = Vec::new();
        for l in &lines {
            joined.extend_from_slice(l);
            joined.push(b'\n');
        }
        check_fhir(&joined, InputFormat::Ndjson)?;
        let [refuse, _] = configs();
        if let Ok(all) = extract(&joined, InputFormat::Ndjson, &refuse) {
            let mut union = std::collections::BTreeSet::new();
            for l in &lines {
                let one = extract(l, InputFormat::Json, &refuse);
                prop_assert!(one.is_ok(), "a line refused alone but accepted in NDJSON");
                union.extend(one.unwrap().keywords);
            }
            prop_assert_eq!(all.keywords, union);
        }
        let at = cut.index(joined.len());
        check_fhir(&joined[..at], InputFormat::Ndjson)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger network: frames and handshake
// ---------------------------------------------------------------------------------------------

const CHAIN: &str = "fuzz-net";
const MAX_FRAME: u32 = 4096;

fn net_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 11; 32])
}

fn net_set() -> ValidatorSet {
    ValidatorSet::new(CHAIN, (0..4).map(|i| net_key(i).verifying_key()).collect()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A stream of typed frames: messages of several sizes and keepalives.
fn frame_stream() -> Vec<u8> {
    rt().block_on(async {
        let mut out = Vec::new();
        for (kind, body) in [
            (Kind::Message, vec![1u8; 1]),
            (Kind::Keepalive, vec![]),
            (Kind::Message, (0..=255).collect::<Vec<u8>>()),
            (Kind::Message, vec![0xEE; 3000]),
        ] {
            write_typed(&mut out, kind, &body, MAX_FRAME).await.unwrap();
        }
        out
    })
}

/// The hello a dialing replica sends (captured from a real `dial`).
fn real_hello(id: u8) -> Vec<u8> {
    rt().block_on(async {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let me = Identity::new(u32::from(id), net_key(id));
        let set = net_set();
        let dialer = tokio::spawn(async move {
            let _ = dial(&mut a, &me, &set, 0).await;
        });
        let hello = read_frame(&mut b, 1024).await.unwrap().unwrap();
        drop(b);
        let _ = dialer.await;
        hello
    })
}

/// (file name, bytes) entries of one corpus target.
type Entries = Vec<(String, Vec<u8>)>;

fn net_corpus() -> Vec<(&'static str, Entries)> {
    vec![
        (
            "net_frames",
            vec![("stream.bin".to_owned(), frame_stream())],
        ),
        (
            "net_hello",
            (1..4)
                .map(|i| (format!("hello-{i}.bin"), real_hello(i)))
                .collect(),
        ),
    ]
}

/// Writes the corpus under `EHR_FUZZ_REGEN=1`; otherwise checks it is committed: the frame
/// stream reads back, the FHIR edge cases extract.
#[test]
fn corpus_is_committed() {
    let mut targets = net_corpus();
    targets.push(("fhir_json", fhir_edge_cases()));
    for (target, entries) in &targets {
        let refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        let _ = mutate::sync_corpus(target, &refs);
    }
    let stream = &mutate::corpus("net_frames")[0].1;
    assert_eq!(stream, &frame_stream(), "frame encoding changed");
    let frames = read_all_typed(stream).unwrap();
    assert_eq!(frames.len(), 4);
    // Hellos carry a random nonce: committed ones differ from fresh ones only there.
    for (name, h) in mutate::corpus("net_hello") {
        assert_eq!(h.len(), real_hello(1).len(), "{name}");
    }
    let [refuse, _] = configs();
    for (name, doc) in mutate::corpus("fhir_json") {
        let e = extract(&doc, InputFormat::Json, &refuse).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!e.keywords.is_empty(), "{name}");
    }
}

fn read_all_typed(bytes: &[u8]) -> Result<Vec<(Kind, Vec<u8>)>, String> {
    rt().block_on(async {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            match read_typed(&mut r, MAX_FRAME).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return Ok(out),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
}

/// Transcript of the handshake as the dialer signs it (see `ledger_net::handshake`).
fn dialer_transcript(dialer_hello: &[u8], listener_hello: &[u8]) -> Vec<u8> {
    let mut m = b"ehr-ledger-net/handshake/v1\0".to_vec();
    m.push(0);
    m.extend_from_slice(dialer_hello);
    m.extend_from_slice(listener_hello);
    m
}

/// Runs `accept` (as replica 0) against a scripted dialer that sends `hello` and then a
/// signature by `signer` over the real transcript (or `raw_sig` if given).
fn scripted_accept(hello: Vec<u8>, signer: u8, raw_sig: Option<Vec<u8>>) -> Result<u32, String> {
    rt().block_on(async {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let me = Identity::new(0, net_key(0));
        let set = net_set();
        let listener = tokio::spawn(async move { accept(&mut a, &me, &set).await });
        let theirs = read_frame(&mut b, 1024).await.unwrap().unwrap();
        let _ = write_frame(&mut b, &hello, u32::MAX).await;
        let sig = raw_sig.unwrap_or_else(|| {
            net_key(signer)
                .sign(&dialer_transcript(&hello, &theirs))
                .to_bytes()
                .to_vec()
        });
        let _ = write_frame(&mut b, &sig, u32::MAX).await;
        // End of input for the listener; its answer still fits the pipe's buffer.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut b).await;
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), listener)
            .await
            .map_err(|_| "handshake hung".to_owned())?
            .unwrap();
        drop(b);
        r.map_err(|e| e.to_string())
    })
}

/// Decodes a hello the way the protocol defines it: (chain, replica) if well formed.
fn parse_hello(h: &[u8]) -> Option<(Vec<u8>, u32)> {
    let rest = h.strip_prefix(b"EHRL")?;
    let (ver, rest) = rest.split_first_chunk::<2>()?;
    if u16::from_be_bytes(*ver) != 1 {
        return None;
    }
    let (&n, rest) = rest.split_first()?;
    let n = n as usize;
    if n == 0 || n > 64 || rest.len() != n + 4 + 32 {
        return None;
    }
    let id = u32::from_be_bytes(rest[n..n + 4].try_into().ok()?);
    Some((rest[..n].to_vec(), id))
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    /// Frame streams: no panic; every frame read is within the limit, its kind is known and a
    /// message body is never empty; re-encoding the frames read gives back the bytes consumed.
    #[test]
    fn frame_decoder(input in mutate::inputs(mutate::seeds("net_frames"), 16 * 1024)) {
        let frames = rt().block_on(async {
            let mut r = &input[..];
            let mut frames = Vec::new();
            let mut consumed = 0;
            while let Ok(Some(f)) = read_typed(&mut r, MAX_FRAME).await {
                consumed = input.len() - r.len();
                frames.push(f);
            }
            (frames, consumed)
        });
        let (frames, consumed) = frames;
        let mut again = Vec::new();
        rt().block_on(async {
            for (kind, body) in &frames {
                prop_assert!(body.len() <= MAX_FRAME as usize);
                prop_assert!(*kind == Kind::Keepalive || !body.is_empty());
                write_typed(&mut again, *kind, body, MAX_FRAME).await.unwrap();
            }
            Ok(())
        })?;
        prop_assert_eq!(&again[..], &input[..consumed]);
        // The raw layer on the same bytes: bounded, never panics.
        let raw = rt().block_on(async { read_frame(&mut &input[..], MAX_FRAME).await });
        if let Ok(Some(p)) = raw {
            prop_assert!(!p.is_empty() && p.len() <= MAX_FRAME as usize);
        }
    }
}

proptest! {
    #![proptest_config(mutate::config(512))]

    /// Handshake: hellos mutated at byte level (and correctly signed by replica 1 over the
    /// real transcript, or followed by a mutated signature). `accept` never panics or hangs,
    /// and succeeds only for a well-formed hello of this chain from replica 1 with its valid
    /// signature.
    #[test]
    fn handshake_accept(
        hello in mutate::inputs(mutate::seeds("net_hello"), 512),
        sig in prop_oneof![
            3 => Just(None),
            1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Some),
        ],
    ) {
        let raw = sig.is_some();
        let r = scripted_accept(hello.clone(), 1, sig);
        prop_assert!(r.as_ref().err().is_none_or(|e| e != "handshake hung"));
        if let Ok(peer) = r {
            prop_assert!(!raw, "a handshake with a random signature succeeded");
            prop_assert_eq!(peer, 1);
            let parsed = parse_hello(&hello);
            prop_assert_eq!(parsed, Some((CHAIN.as_bytes().to_vec(), 1)));
        }
    }
}

/// The harness reaches success: the genuine hello of replica 1, signed by it, is accepted;
/// the same hello signed by replica 2 is refused.
#[test]
fn handshake_harness_reaches_success() {
    let hello = real_hello(1);
    assert_eq!(scripted_accept(hello.clone(), 1, None), Ok(1));
    assert!(scripted_accept(hello, 2, None).is_err());
}

/// Committed inputs that once failed are replayed (`fuzz/regressions/fhir_json`, `net_*`).
#[test]
fn regressions_replay() {
    for (name, b) in mutate::regressions("fhir_json") {
        check_fhir(&b, InputFormat::Json).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_fhir(&b, InputFormat::Ndjson).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (_, b) in mutate::regressions("net_frames") {
        let _ = read_all_typed(&b);
    }
}
