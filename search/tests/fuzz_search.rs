//! Fuzz harnesses (bounded property tests) for every decoder of `ehr-search`: the policy
//! parser, the ABE encodings (public parameters, master keys and shares, user keys, partial
//! keys, wrapped keys), capsules, trapdoors, search-key states and owners, and index cursors.
//!
//! Inputs are mutations of a committed corpus of valid encodings (`fuzz/corpus/<target>/`,
//! written by [`corpus_is_committed_and_round_trips`] under `EHR_FUZZ_REGEN=1`) plus raw bytes.
//! Properties: no panic; an accepted input re-encodes to exactly the same bytes (every format
//! here is canonical); a mutated wrapped key, capsule or partial key never opens to a different
//! secret or passes verification. `EHR_FUZZ_CASES=<n>` multiplies the case counts.

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use std::sync::{Arc, OnceLock};

use ehr_search::abe::{
    self, MasterKey, MasterKeyShare, PartialKey, PublicParams, UserKey, WrappedKey,
};
use ehr_search::index::{Cursor, Index, IndexConfig, IndexEvent};
use ehr_search::policy::{MAX_DEPTH, MAX_LEAVES, Policy};
use ehr_search::sse::{
    Capsule, CapsuleId, Keyword, Label, MemoryCounters, Query, SearchKeyOwner, SearchKeyState,
    Trapdoor,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Largest mutated input (the biggest seed, a public parameter set, is under 2 KiB).
const MAX_LEN: usize = 8 * 1024;

type Decoder = fn(&[u8]) -> Option<Vec<u8>>;

/// Every binary decoder: the corpus target it is seeded from, and decode-then-re-encode.
const DECODERS: &[(&str, Decoder)] = &[
    ("abe_public_params", |b| {
        PublicParams::from_bytes(b).ok().map(|x| x.to_bytes())
    }),
    ("abe_master_key", |b| {
        MasterKey::from_bytes(b).ok().map(|x| x.to_bytes().to_vec())
    }),
    ("abe_master_key_share", |b| {
        MasterKeyShare::from_bytes(b)
            .ok()
            .map(|x| x.to_bytes().to_vec())
    }),
    ("abe_user_key", |b| {
        UserKey::from_bytes(b).ok().map(|x| x.to_bytes().to_vec())
    }),
    ("abe_partial_key", |b| {
        PartialKey::from_bytes(b)
            .ok()
            .map(|x| x.to_bytes().to_vec())
    }),
    ("abe_wrapped_key", |b| {
        WrappedKey::from_bytes(b).ok().map(|x| x.to_bytes())
    }),
    ("sse_capsule", |b| {
        Capsule::from_bytes(b).ok().map(|x| x.to_bytes())
    }),
    ("sse_trapdoor", |b| {
        Trapdoor::from_bytes(b).ok().map(|x| x.to_bytes().to_vec())
    }),
    ("sse_state", |b| {
        SearchKeyState::from_bytes(b)
            .ok()
            .map(|x| x.to_bytes().to_vec())
    }),
    ("sse_owner", |b| {
        SearchKeyOwner::from_bytes(b)
            .ok()
            .map(|x| x.to_bytes().to_vec())
    }),
    ("sse_label", |b| {
        Label::from_slice(b).ok().map(|x| x.0.to_vec())
    }),
    ("index_cursor", |b| {
        Cursor::from_bytes(b).ok().map(|x| x.to_bytes())
    }),
];

fn decoder(target: &str) -> Decoder {
    DECODERS
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, d)| *d)
        .expect("invariant: every harness names a known decoder")
}

/// Decodes with the target's decoder; an accepted input must re-encode byte for byte.
fn check_canonical(target: &str, input: &[u8]) -> Result<bool, TestCaseError> {
    match decoder(target)(input) {
        None => Ok(false),
        Some(re) => {
            prop_assert_eq!(&re, input, "{} accepted a non-canonical encoding", target);
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world: deterministic keys and objects that the corpus is made of
// ---------------------------------------------------------------------------------------------

const SECRET: &[u8] = b"the data key of a health record.";
const AAD: &[u8] = b"record-aad";
const ATTRS: [&str; 3] = ["role:researcher", "irb:study-42", "dept:cardiology"];
const USER: &[u8] = b"researcher-1";

/// Every seed object, with the keys that open them.
struct World {
    pp: PublicParams,
    shares: Vec<MasterKeyShare>,
    msk_pp: PublicParams,
    msk: MasterKey,
    user: UserKey,
    partials: Vec<PartialKey>,
    /// (policy text, wrapped key under it with `SECRET`/`AAD`).
    wrapped: Vec<(String, WrappedKey)>,
    owner: SearchKeyOwner,
    capsules: Vec<Capsule>,
    trapdoors: Vec<Trapdoor>,
    cursors: Vec<Cursor>,
}

const POLICIES: [&str; 6] = [
    "role:researcher",
    "role:researcher AND irb:study-42",
    "role:researcher or dept:oncology",
    "2 of (role:researcher, irb:study-42, dept:cardiology)",
    "irb:study-42 and 2 of (role:researcher, dept:cardiology, irb:study-42)",
    "org:\"St. Mary's\" or (dept:cardiology and role:researcher)",
];

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0x5eed_f022);
        let (pp, shares) = abe::setup_dealer(3, 2, &mut rng).unwrap();
        let (msk_pp, msk) = abe::setup(&mut rng);
        let partials: Vec<PartialKey> = shares
            .iter()
            .map(|s| s.issue_partial(&pp, USER, ATTRS, &mut rng).unwrap())
            .collect();
        let user = abe::combine(&pp, USER, ATTRS, &partials[..2]).unwrap();
        let wrapped = POLICIES
            .iter()
            .map(|p| {
                let policy = Policy::parse(p).unwrap();
                let wk = abe::wrap(&pp, &policy, SECRET, AAD, &mut rng).unwrap();
                (policy.to_string(), wk)
            })
            .collect();
        let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng, 64).unwrap();
        owner.rotate().unwrap();
        let capsules = [POLICIES[1], POLICIES[3]]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let policy = Policy::parse(p).unwrap();
                Capsule::seal(
                    &pp,
                    &policy,
                    CapsuleId([i as u8 + 1; 32]),
                    &owner.state(),
                    &mut rng,
                )
                .unwrap()
            })
            .collect();
        let kw = Keyword::code("http://loinc.org|4548-4").unwrap();
        let trapdoors = owner.state().trapdoors(CapsuleId([1; 32]), &kw);
        World {
            cursors: cursors(&owner),
            pp,
            shares,
            msk_pp,
            msk,
            user,
            partials,
            wrapped,
            owner,
            capsules,
            trapdoors,
        }
    })
}

/// Real cursors: pages of one result over a small index.
fn cursors(owner: &SearchKeyOwner) -> Vec<Cursor> {
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::open(dir.path(), IndexConfig::default()).unwrap();
    let kw = Keyword::text("troponin").unwrap();
    let mut counters = MemoryCounters::new();
    for (i, cid) in [
        "bafkreiaaa".as_bytes(),
        b"bafkreibbbbbbbbbbbbbbbbbbbbbb",
        &[0x01, 0x55, 0x12, 0x20, 7, 7, 7],
    ]
    .iter()
    .enumerate()
    {
        let labels = owner
            .epoch_key()
            .labels_for(std::slice::from_ref(&kw), &mut counters)
            .unwrap();
        index
            .apply(&IndexEvent::RecordAdded {
                cid: cid.to_vec(),
                capsule_id: CapsuleId([1; 32]),
                epoch: owner.epoch(),
                height: 1 + i as u64,
                labels,
            })
            .unwrap();
    }
    index.commit().unwrap();
    let q = Query::keyword(&owner.state(), CapsuleId([1; 32]), &kw);
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = index.search(&q, cursor.as_ref(), 1).unwrap();
        match page.next {
            Some(c) => {
                out.push(c.clone());
                cursor = Some(c);
            }
            None => return out,
        }
    }
}

/// The corpus, target by target, as the real encoders write it.
/// (file name, bytes) entries of one corpus target.
type Entries = Vec<(String, Vec<u8>)>;

fn generated_corpus() -> Vec<(&'static str, Entries)> {
    let w = world();
    let named = |prefix: &str, items: Vec<Vec<u8>>| -> Vec<(String, Vec<u8>)> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let ext = if prefix == "policy" { "txt" } else { "bin" };
                (format!("{prefix}-{i}.{ext}"), b)
            })
            .collect()
    };
    vec![
        (
            "abe_public_params",
            named("pp", vec![w.pp.to_bytes(), w.msk_pp.to_bytes()]),
        ),
        (
            "abe_master_key",
            named("msk", vec![w.msk.to_bytes().to_vec()]),
        ),
        (
            "abe_master_key_share",
            named(
                "share",
                w.shares.iter().map(|s| s.to_bytes().to_vec()).collect(),
            ),
        ),
        (
            "abe_user_key",
            named("user", vec![w.user.to_bytes().to_vec()]),
        ),
        (
            "abe_partial_key",
            named(
                "partial",
                w.partials.iter().map(|p| p.to_bytes().to_vec()).collect(),
            ),
        ),
        (
            "abe_wrapped_key",
            named("wk", w.wrapped.iter().map(|(_, k)| k.to_bytes()).collect()),
        ),
        (
            "sse_capsule",
            named(
                "capsule",
                w.capsules.iter().map(Capsule::to_bytes).collect(),
            ),
        ),
        (
            "sse_trapdoor",
            named(
                "trapdoor",
                w.trapdoors.iter().map(|t| t.to_bytes().to_vec()).collect(),
            ),
        ),
        (
            "sse_state",
            named("state", vec![w.owner.state().to_bytes().to_vec()]),
        ),
        (
            "sse_owner",
            named("owner", vec![w.owner.to_bytes().to_vec()]),
        ),
        (
            "sse_label",
            named("label", vec![w.trapdoors[0].key().label(3).0.to_vec()]),
        ),
        (
            "index_cursor",
            named("cursor", w.cursors.iter().map(Cursor::to_bytes).collect()),
        ),
        (
            "policy",
            named(
                "policy",
                POLICIES
                    .iter()
                    .map(|p| p.as_bytes().to_vec())
                    .chain([
                        b"a:1 OR b:2 AND c:3".to_vec(),
                        b"1 of (a:1)".to_vec(),
                        b"((((a:b))))".to_vec(),
                        b"k:\"quoted \\\" and \\\\ value\" and x:y".to_vec(),
                        b"3 of (a:1, b:2 or c:3, 2 of (d:4, e:5, f:6), g:7)".to_vec(),
                        "name:\"\u{e9}l\u{e8}ve\" and k.v-w_x:y/z@q+r#s"
                            .as_bytes()
                            .to_vec(),
                    ])
                    .collect(),
            ),
        ),
    ]
}

/// Writes the corpus under `EHR_FUZZ_REGEN=1`; otherwise checks that the committed corpus
/// exists and that every committed entry still decodes and re-encodes byte for byte (the
/// encodings are versioned formats stored on the ledger: a change must not break old bytes).
#[test]
fn corpus_is_committed_and_round_trips() {
    for (target, entries) in generated_corpus() {
        let refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        let _ = mutate::sync_corpus(target, &refs);
        for (name, bytes) in mutate::corpus(target) {
            if target == "policy" {
                let text = std::str::from_utf8(&bytes).expect("policy corpus is UTF-8");
                let p = Policy::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(Policy::parse(&p.to_string()).unwrap(), p, "{name}");
                continue;
            }
            let re = decoder(target)(&bytes).unwrap_or_else(|| {
                panic!("committed corpus entry {target}/{name} does not decode")
            });
            assert_eq!(re, bytes, "{target}/{name} does not re-encode identically");
        }
    }
}

/// Committed inputs that once failed (`fuzz/regressions/<target>/`) are replayed here.
#[test]
fn regressions_replay() {
    for (target, _) in DECODERS {
        for (name, bytes) in mutate::regressions(target) {
            check_canonical(target, &bytes)
                .unwrap_or_else(|e| panic!("regression {target}/{name}: {e}"));
        }
    }
    for (name, bytes) in mutate::regressions("policy") {
        check_policy_text(&String::from_utf8_lossy(&bytes))
            .unwrap_or_else(|e| panic!("regression policy/{name}: {e}"));
    }
}

fn seeds(target: &str) -> Arc<Vec<Vec<u8>>> {
    mutate::seeds(target)
}

fn targeted(targets: &'static [&'static str]) -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let arms: Vec<_> = targets
        .iter()
        .map(|t| {
            let t: &'static str = t;
            mutate::inputs(seeds(t), MAX_LEN).prop_map(move |b| (t, b))
        })
        .collect();
    proptest::strategy::Union::new(arms)
}

const CHEAP: &[&str] = &[
    "sse_trapdoor",
    "sse_state",
    "sse_owner",
    "sse_label",
    "index_cursor",
];
const ALL: [&str; 12] = [
    "abe_public_params",
    "abe_master_key",
    "abe_master_key_share",
    "abe_user_key",
    "abe_partial_key",
    "abe_wrapped_key",
    "sse_capsule",
    "sse_trapdoor",
    "sse_state",
    "sse_owner",
    "sse_label",
    "index_cursor",
];
const POINTS: &[&str] = &[
    "abe_public_params",
    "abe_master_key",
    "abe_master_key_share",
    "abe_user_key",
    "abe_partial_key",
    "abe_wrapped_key",
    "sse_capsule",
];

proptest! {
    #![proptest_config(mutate::config(2048))]

    /// The fixed-layout search encodings: no panic, canonical when accepted.
    #[test]
    fn sse_and_cursor_decoders((target, input) in targeted(CHEAP)) {
        check_canonical(target, &input)?;
    }
}

proptest! {
    #![proptest_config(mutate::config(512))]

    /// The point-carrying ABE encodings (every accepted point is subgroup-checked, so cases are
    /// fewer): no panic, canonical when accepted.
    #[test]
    fn abe_decoders((target, input) in targeted(POINTS)) {
        check_canonical(target, &input)?;
    }

    /// Any input against every decoder (cross-format confusion): no panic, canonical when
    /// accepted, and no input is accepted by two binary decoders of different kinds.
    #[test]
    fn every_decoder_on_any_input((_seeded_from, input) in targeted(&ALL)) {
        let mut accepted = Vec::new();
        for (target, _) in DECODERS {
            if check_canonical(target, &input)? {
                accepted.push(*target);
            }
        }
        // A 16-byte label is any 16 bytes; everything else has a kind, version or length
        // that tells it apart.
        accepted.retain(|t| *t != "sse_label");
        prop_assert!(accepted.len() <= 1, "accepted by {:?}", accepted);
    }
}

proptest! {
    #![proptest_config(mutate::config(64))]

    /// A mutated wrapped key never unwraps to anything but the original secret (CCA wrapping),
    /// and unwrapping never panics.
    #[test]
    fn mutated_wrapped_keys_do_not_open_differently(
        input in mutate::mutated(seeds("abe_wrapped_key"), 3, MAX_LEN)
    ) {
        let w = world();
        if let Ok(wk) = WrappedKey::from_bytes(&input)
            && let Ok(secret) = abe::unwrap(&w.user, &wk, AAD)
        {
            prop_assert_eq!(&secret[..], SECRET);
            prop_assert!(
                w.wrapped.iter().any(|(_, k)| k.to_bytes() == input),
                "a mutated wrapped key opened"
            );
        }
    }

    /// A mutated capsule never opens to another search-key state.
    #[test]
    fn mutated_capsules_do_not_open_differently(
        input in mutate::mutated(seeds("sse_capsule"), 3, MAX_LEN)
    ) {
        let w = world();
        if let Ok(c) = Capsule::from_bytes(&input)
            && let Ok(state) = c.open(&w.user)
        {
            prop_assert_eq!(&state.to_bytes()[..], &w.owner.state().to_bytes()[..]);
            prop_assert!(
                w.capsules.iter().any(|k| k.to_bytes() == input),
                "a mutated capsule opened"
            );
        }
    }

    /// A mutated partial key never verifies, and combining it with genuine partials never
    /// panics (it is skipped or the combination fails).
    #[test]
    fn mutated_partial_keys_do_not_verify(
        input in mutate::mutated(seeds("abe_partial_key"), 3, MAX_LEN)
    ) {
        let w = world();
        if let Ok(p) = PartialKey::from_bytes(&input) {
            let genuine = w.partials.iter().any(|g| g.to_bytes()[..] == input[..]);
            if w.pp.verify_partial(USER, ATTRS, &p).is_ok() {
                prop_assert!(genuine, "a mutated partial key verified");
            }
            let _ = abe::combine(&w.pp, USER, ATTRS, &[p, w.partials[2].clone()]);
        }
    }

    /// Mutated public parameters and user keys: checking and using them never panics.
    #[test]
    fn mutated_params_and_user_keys_are_harmless(
        pp_bytes in mutate::mutated(seeds("abe_public_params"), 2, MAX_LEN),
        key_bytes in mutate::mutated(seeds("abe_user_key"), 2, MAX_LEN),
    ) {
        let w = world();
        if let Ok(pp) = PublicParams::from_bytes(&pp_bytes) {
            let _ = pp.verify_consistency();
            let policy = Policy::parse(POLICIES[1]).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let _ = abe::wrap(&pp, &policy, SECRET, AAD, &mut rng);
        }
        if let Ok(key) = UserKey::from_bytes(&key_bytes) {
            let genuine = key.to_bytes()[..] == w.user.to_bytes()[..];
            let opened = abe::unwrap(&key, &w.wrapped[1].1, AAD);
            if !genuine {
                // A different key may hold different attributes; it must never yield another
                // secret.
                if let Ok(s) = opened {
                    prop_assert_eq!(&s[..], SECRET);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The policy parser
// ---------------------------------------------------------------------------------------------

/// Parses `text`; an accepted policy must print canonically (parse . print = id, print is a
/// fixed point), respect the limits, compile to an LSSS, and be satisfied by its own attributes.
fn check_policy_text(text: &str) -> Result<(), TestCaseError> {
    let Ok(p) = Policy::parse(text) else {
        return Ok(());
    };
    let printed = p.to_string();
    let again = Policy::parse(&printed)
        .map_err(|e| TestCaseError::fail(format!("canonical form {printed:?} fails: {e}")))?;
    prop_assert_eq!(&again, &p);
    prop_assert_eq!(again.to_string(), printed);
    prop_assert!(p.leaf_count() <= MAX_LEAVES);
    let lsss = p.lsss();
    prop_assert_eq!(lsss.rows().len(), p.leaf_count());
    let attrs = p.attributes();
    prop_assert!(p.is_satisfied_by(attrs.iter().map(String::as_str)));
    prop_assert!(lsss.reconstruct(attrs.iter().map(String::as_str)).is_some());
    prop_assert!(!p.is_satisfied_by(std::iter::empty::<&str>()));
    prop_assert!(lsss.reconstruct(std::iter::empty::<&str>()).is_none());
    Ok(())
}

/// A random formula printed with random spelling (case, spaces, redundant parentheses).
fn formula(depth: u32) -> BoxedStrategy<String> {
    let attr = prop_oneof![
        "[a-c]:[0-3]",
        "[A-Za-z][A-Za-z0-9_.-]{0,6}:[A-Za-z0-9_./@+:#-]{1,8}",
        "[a-z]{1,3}:\"[^\"\\\\\\x00-\\x1f]{1,8}\"",
    ];
    if depth == 0 {
        return attr.boxed();
    }
    let sub = formula(depth - 1);
    let kw = |w: &'static str| {
        prop_oneof![
            Just(w.to_lowercase()),
            Just(w.to_uppercase()),
            Just(w.to_owned())
        ]
    };
    prop_oneof![
        3 => attr,
        2 => (proptest::collection::vec(sub.clone(), 2..4), kw("And"), " {1,2}")
            .prop_map(|(v, k, sp)| format!("({})", v.join(&format!("{sp}{k}{sp}")))),
        2 => (proptest::collection::vec(sub.clone(), 2..4), kw("Or"))
            .prop_map(|(v, k)| v.join(&format!(" {k} "))),
        2 => (proptest::collection::vec(sub.clone(), 1..5), 0usize..6, kw("Of"))
            .prop_map(|(v, k, of)| format!("{k} {of} ({})", v.join(", "))),
        1 => sub.prop_map(|s| format!("( {s} )")),
    ]
    .boxed()
}

/// Byte-level mutations of the policy corpus and of generated formulas, read as UTF-8
/// (lossily, so broken sequences become U+FFFD, which the parser must refuse or quote).
fn policy_text() -> impl Strategy<Value = String> {
    let corpus = seeds("policy");
    prop_oneof![
        3 => formula(3),
        3 => mutate::mutated(corpus.clone(), 4, 2048)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        2 => formula(3).prop_flat_map(|f| {
            mutate::mutated(Arc::new(vec![f.into_bytes()]), 3, 2048)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        }),
        1 => "[a-z0-9:()\", \\\\]{0,64}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    /// The parser on hostile text: no panic; accepted policies are canonical and usable.
    #[test]
    fn policy_parser(text in policy_text()) {
        check_policy_text(&text)?;
    }
}

/// Bounded inputs cannot blow the parser's limits: deep nesting and many leaves are errors.
#[test]
fn policy_limits_are_errors_not_crashes() {
    let deep = format!(
        "{}a:b{}",
        "(".repeat(MAX_DEPTH * 4),
        ")".repeat(MAX_DEPTH * 4)
    );
    assert!(Policy::parse(&deep).is_err());
    let deep_gates =
        (0..MAX_DEPTH * 2).fold("a:b".to_owned(), |acc, i| format!("1 of ({acc}, x:{i})"));
    assert!(Policy::parse(&deep_gates).is_err());
    let wide = (0..=MAX_LEAVES)
        .map(|i| format!("a:{i}"))
        .collect::<Vec<_>>()
        .join(" or ");
    assert!(Policy::parse(&wide).is_err());
    let huge = "a:".to_owned() + &"b".repeat(20_000);
    assert!(Policy::parse(&huge).is_err());
    let threshold = format!("{} of (a:1, b:2)", u128::MAX);
    assert!(Policy::parse(&threshold).is_err());
}

/// The harness reaches past the headers: for every target, some mutated inputs still decode
/// (so the canonical-form check above is exercised) and some do not.
#[test]
fn mutations_reach_deep_decoder_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    assert_eq!(ALL.len(), DECODERS.len());
    for target in ALL {
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        );
        let strategy = mutate::mutated(seeds(target), 2, MAX_LEN);
        let (mut ok, mut err) = (0, 0);
        for _ in 0..300 {
            let input = strategy.new_tree(&mut runner).unwrap().current();
            match decoder(target)(&input) {
                Some(_) => ok += 1,
                None => err += 1,
            }
        }
        eprintln!("{target}: {ok} of 300 mutated inputs decode");
        assert!(ok > 0 && err > 0, "{target}: {ok} accepted, {err} refused");
    }
}
