//! The policy language through the public API: error positions, precedence, round trips,
//! thresholds as AND / OR.

use ehr_search::error::PolicyError;
use ehr_search::policy::{Node, Policy};

fn pos_of(text: &str) -> usize {
    match Policy::parse(text).expect_err(text) {
        PolicyError::Invalid { pos, .. }
        | PolicyError::Unexpected { pos, .. }
        | PolicyError::UnexpectedEnd { pos, .. }
        | PolicyError::ThresholdOutOfRange { pos, .. }
        | PolicyError::TooDeep { pos, .. } => pos,
        other => panic!("{text}: no position in {other}"),
    }
}

#[test]
fn errors_say_where() {
    let cases = [
        ("role:researcher and", 19),
        ("role:researcher and or irb:x", 20),
        ("(role:researcher or irb:x", 25),
        ("role:researcher) ", 15),
        ("role:researcher irb:x", 16),
        ("role:researcher and researcher", 20),
        ("2 of (a:1)", 0),
        ("2 of a:1, b:2", 5),
        ("2 of (a:1 b:2)", 10),
        ("org:\"St. Mary's", 4),
        ("org:\"bad \\q escape\"", 9),
        ("a:1 ; b:2", 4),
        ("", 0),
    ];
    for (text, want) in cases {
        if text.is_empty() {
            assert_eq!(Policy::parse(text).unwrap_err(), PolicyError::Empty);
            continue;
        }
        assert_eq!(
            pos_of(text),
            want,
            "{text}: {}",
            Policy::parse(text).unwrap_err()
        );
    }
    let msg = Policy::parse("(a:1 or b:2").unwrap_err().to_string();
    assert!(msg.contains("byte 11") && msg.contains("')'"), "{msg}");
}

#[test]
fn and_binds_tighter_than_or_and_keywords_ignore_case() {
    let p = Policy::parse("a:1 OR b:2 And c:3").unwrap();
    assert!(matches!(p.root(), Node::Or(children) if children.len() == 2));
    assert!(p.is_satisfied_by(["a:1"]));
    assert!(p.is_satisfied_by(["b:2", "c:3"]));
    assert!(!p.is_satisfied_by(["b:2"]));
    assert_eq!(p.to_string(), "a:1 or b:2 and c:3");
    let q = Policy::parse("(a:1 or b:2) and c:3").unwrap();
    assert!(!q.is_satisfied_by(["a:1"]));
    assert_eq!(q.to_string(), "(a:1 or b:2) and c:3");
}

#[test]
fn display_round_trips_quotes_and_thresholds() {
    for text in [
        r#"org:"St. Mary's" and role:researcher"#,
        "2 of (irb:study-42, role:researcher and dept:cardiology, org:hospital-a or org:hospital-b)",
        r#"note:"a \"quoted\" \\ value" or x:y"#,
        "1 of (a:1)",
        "status:active-2025Q3 and url:https://example/x",
    ] {
        let p = Policy::parse(text).unwrap();
        let again = Policy::parse(&p.to_string()).unwrap();
        assert_eq!(again, p, "{text}");
        assert_eq!(again.to_string(), p.to_string());
    }
    let p = Policy::parse(r#"org:"St. Mary's""#).unwrap();
    assert_eq!(
        p.attributes().into_iter().collect::<Vec<_>>(),
        ["org:St. Mary's"]
    );
}

#[test]
fn one_of_n_is_or_and_n_of_n_is_and() {
    let universe = ["a:1", "b:2", "c:3", "d:4"];
    let pairs = [
        ("1 of (a:1, b:2, c:3, d:4)", "a:1 or b:2 or c:3 or d:4"),
        ("4 of (a:1, b:2, c:3, d:4)", "a:1 and b:2 and c:3 and d:4"),
    ];
    for (t, f) in pairs {
        let (t, f) = (Policy::parse(t).unwrap(), Policy::parse(f).unwrap());
        // Same LSSS shape, too: no threshold columns for 1-of-n and n-of-n.
        assert_eq!(t.lsss().columns(), f.lsss().columns());
        for mask in 0u8..16 {
            let set: Vec<&str> = (0..4)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| universe[i])
                .collect();
            assert_eq!(t.is_satisfied_by(&set), f.is_satisfied_by(&set), "{set:?}");
        }
    }
    let two = Policy::parse("2 of (a:1, b:2, c:3)").unwrap();
    assert!(two.is_satisfied_by(["a:1", "c:3"]));
    assert!(!two.is_satisfied_by(["b:2"]));
    assert_eq!(two.lsss().columns(), 2);
}

#[test]
fn hostile_input_is_bounded() {
    let nested = format!("{}a:1{}", "(".repeat(40), ")".repeat(40));
    assert!(matches!(
        Policy::parse(&nested),
        Err(PolicyError::TooDeep { .. })
    ));
    let wide = vec!["a:1"; 300].join(" or ");
    assert!(matches!(
        Policy::parse(&wide),
        Err(PolicyError::TooManyAttributes { .. })
    ));
    let huge = "a".repeat(100_000);
    assert!(matches!(
        Policy::parse(&huge),
        Err(PolicyError::TooLong { .. })
    ));
    assert!(Policy::parse("99999999999999999999999 of (a:1)").is_err());
}
