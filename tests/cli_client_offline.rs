//! The `ehr` client commands' local behaviour and exit codes, with the real binary: identity
//! files, argument errors, an unreachable node, and a node's refusal (a canned HTTP server).

mod client_support;

use client_support::{canned, ehr};

fn new_identity(dir: &std::path::Path, name: &str, node: &str) -> String {
    let r = ehr(
        dir,
        &[
            "keygen",
            "--out",
            name,
            "--role",
            "researcher",
            "--label",
            "alice",
            "--chain-id",
            "ehr-test",
            "--node",
            node,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.trim().to_owned()
}

#[test]
fn keygen_writes_a_private_identity_and_prints_only_the_public_id() {
    let dir = tempfile::tempdir().unwrap();
    let id = new_identity(dir.path(), "a.json", "http://127.0.0.1:9");
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let text = std::fs::read_to_string(dir.path().join("a.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["participant"], id.as_str());
    assert_eq!(v["role"], "researcher");
    assert!(v["abe_key"].is_null());
    let seed = v["signing_key"].as_str().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Neither output stream shows the seed; a second keygen never overwrites.
    let r = ehr(
        dir.path(),
        &[
            "keygen",
            "--out",
            "a.json",
            "--role",
            "researcher",
            "--chain-id",
            "ehr-test",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(!r.stdout.contains(seed) && !r.stderr.contains(seed));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.json")).unwrap(),
        text
    );
}

#[test]
fn usage_and_input_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // Unknown subcommand, missing keyword, bad label, missing identity, bad CID.
    for args in [
        vec!["no-such-command"],
        vec![
            "keygen",
            "--out",
            "x.json",
            "--role",
            "researcher",
            "--label",
            "Bad Label",
            "--chain-id",
            "c",
        ],
        vec!["search", "--text", "x"],
        vec!["ledger", "verify", "not-a-cid", "--identity", "x.json"],
        vec!["search", "|c", "--limit", "0"],
        vec!["get", "bafkqaaa", "-o", "x", "--purpose", "curiosity"],
    ] {
        let r = ehr(dir.path(), &args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty());
    }
    // Help is not an error.
    let r = ehr(dir.path(), &["search", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Examples:"), "{}", r.stdout);
}

#[cfg(unix)]
#[test]
fn an_identity_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    new_identity(dir.path(), "a.json", "http://127.0.0.1:9");
    let path = dir.path().join("a.json");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = ehr(dir.path(), &["ledger", "head", "--identity", "a.json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("chmod 600 a.json"), "{}", r.stderr);
}

#[test]
fn an_unreachable_node_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    new_identity(dir.path(), "a.json", &url);
    let r = ehr(dir.path(), &["ledger", "head", "--identity", "a.json"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("cannot reach the node"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_exits_2_and_shows_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"{"type":"about:blank","title":"Forbidden","status":403,
        "detail":"your attributes do not satisfy the record's policy",
        "errors":[{"field":"cid","reason":"not authorised"}]}"#;
    let server = canned(vec![(403, "application/problem+json", body.into())]).await;
    new_identity(dir.path(), "a.json", &server.url);
    let d = dir.path().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        ehr(
            &d,
            &[
                "grant",
                "bafkqaaa",
                "--to",
                &"ab".repeat(32),
                "--identity",
                "a.json",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("403 Forbidden: your attributes"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("- cid: not authorised"), "{}", r.stderr);
    assert!(r.stderr.contains("req-7"), "{}", r.stderr);
    let heads = server.heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "a grant is sent once");
    assert!(heads[0].starts_with("POST /v1/grants "), "{}", heads[0]);
    assert!(heads[0].contains("authorization: Bearer "), "{}", heads[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failure_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let server = canned(vec![(500, "text/plain", "boom".into())]).await;
    new_identity(dir.path(), "a.json", &server.url);
    let d = dir.path().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        ehr(&d, &["revoke", &"cd".repeat(32), "--identity", "a.json"])
    })
    .await
    .unwrap();
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("500 Internal Server Error: boom"),
        "{}",
        r.stderr
    );
}

/// `ehr search` against a canned node: the capsule list holds a real capsule sealed under the
/// test's CP-ABE parameters; the trapdoors the CLI sends expand to the labels the capsule's
/// owner made, and the hits are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_sends_trapdoors_that_find_the_owners_labels() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ehr::client::{Identity, IdentityRole};
    use ehr_search::sse::{Capsule, CapsuleId, Keyword, SearchKeyOwner, Trapdoor};
    use rand::SeedableRng as _;

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
    let (pp, msk) = ehr_search::abe::setup(&mut rng);
    let policy = ehr_search::policy::Policy::parse("role:researcher AND irb:study-42").unwrap();
    let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng, 8).unwrap();
    owner.rotate().unwrap();
    let capsule_id = CapsuleId([6; 32]);
    let capsule = Capsule::seal(&pp, &policy, capsule_id, &owner.state(), &mut rng).unwrap();
    let kw = Keyword::code("http://loinc.org|4548-4").unwrap();
    let want: Vec<[u8; 16]> = (0..=1)
        .map(|e| {
            owner
                .state()
                .epoch_key(e)
                .unwrap()
                .keyword_key(&kw)
                .label(0)
                .0
        })
        .collect();

    let capsules = serde_json::json!({"capsules": [{
        "id": hex::encode(capsule_id.0), "owner": "ab".repeat(32), "policy": policy.to_string(),
        "epoch": 1, "wrapped_search_key": B64.encode(capsule.to_bytes())
    }]})
    .to_string();
    let hits =
        serde_json::json!({"hits": [{"cid": "bafkqaaa", "capsule": hex::encode(capsule_id.0),
        "epoch": 1, "height": 9}], "next_cursor": null})
        .to_string();
    let server = canned(vec![
        (200, "application/json", capsules),
        (200, "application/json", hits),
    ])
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut id = Identity::generate(
        IdentityRole::Researcher,
        "r",
        "ehr-test",
        Some(server.url.clone()),
    )
    .unwrap();
    let key = ehr_search::abe::keygen(
        &pp,
        &msk,
        &id.participant().0,
        ["role:researcher", "irb:study-42"],
        &mut rng,
    )
    .unwrap();
    id.set_abe_key(key);
    id.save_new(&dir.path().join("r.json")).unwrap();

    let d = dir.path().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        ehr(
            &d,
            &[
                "search",
                "--identity",
                "r.json",
                "http://loinc.org|4548-4",
                "--limit",
                "5",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("bafkqaaa\t9\t{}\t1\n", &hex::encode(capsule_id.0)[..12])
    );

    let heads = server.heads.lock().unwrap();
    assert!(heads[0].starts_with("GET /v1/capsules "), "{}", heads[0]);
    assert!(heads[1].starts_with("POST /v1/search "), "{}", heads[1]);
    let body = heads[1].split("\r\n\r\n").nth(1).unwrap();
    assert!(!body.contains("4548"), "the keyword itself is never sent");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["limit"], 5);
    assert!(v["cursor"].is_null());
    let sent: Vec<[u8; 16]> = v["query"]["keyword"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = Trapdoor::from_bytes(&B64.decode(t.as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(t.capsule(), capsule_id);
            t.key().label(0).0
        })
        .collect();
    assert_eq!(
        sent, want,
        "one trapdoor per epoch, expanding to the owner's labels"
    );
}
