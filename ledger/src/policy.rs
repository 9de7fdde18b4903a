//! A small monotone boolean policy language over attribute strings, evaluated by the ledger to
//! decide whether a participant's registered attributes satisfy a capsule's policy.
//!
//! It reads the same text as the search crate's CP-ABE policies (the ledger does not depend on
//! that crate; this is an independent evaluator of the same language):
//!
//! ```text
//! policy    = or ; or = and ("or" and)* ; and = atom ("and" atom)*
//! atom      = "(" or ")" | NUMBER "of" "(" or ("," or)* ")" | key ":" value
//! key       = ALPHA (ALPHA | DIGIT | "_" | "." | "-")*
//! value     = (ALPHA | DIGIT | "_" | "." | "-" | "/" | "@" | "+" | ":" | "#")+
//!           | '"' (any non-control character but '"' and '\', or '\"', '\\')+ '"'
//! ```
//!
//! Keywords are case-insensitive; the attribute is the string `key:value` with the value
//! unquoted. Examples: `role:researcher and (irb:study-42 or dept:cardiology)`,
//! `2 of (org:a, org:b, org:c)`, `org:"St. Mary's"`. The language is monotone (no negation),
//! like the CP-ABE policies it mirrors. Bounds: [`MAX_POLICY_LEN`] bytes, at most
//! [`MAX_POLICY_LEAVES`] attributes and [`MAX_POLICY_DEPTH`] levels of nesting.

use std::collections::BTreeSet;

use crate::error::StateError;
use crate::tx::{MAX_ATTRIBUTE_LEN, MAX_POLICY_LEN, check_attribute};

/// The most attribute leaves in one policy.
pub const MAX_POLICY_LEAVES: usize = 256;
/// The deepest nesting of parentheses and thresholds.
pub const MAX_POLICY_DEPTH: usize = 32;

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Holds if the attribute is held.
    Attr(String),
    /// Holds if every child holds.
    And(Vec<Policy>),
    /// Holds if some child holds.
    Or(Vec<Policy>),
    /// Holds if at least `k` children hold.
    Threshold {
        /// How many must hold (1..=children).
        k: usize,
        /// The children.
        of: Vec<Policy>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Comma,
    And,
    Or,
    Of,
    Number(u64),
    Attr(String),
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_bare_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '@' | '+' | ':' | '#')
}

fn ends_token(c: Option<char>) -> bool {
    c.is_none_or(|c| c.is_whitespace() || matches!(c, '(' | ')' | ','))
}

fn perr(at: usize, why: &str) -> StateError {
    StateError::Policy(format!("{why} at byte {at}"))
}

/// Splits policy text into tokens; attributes come out unquoted (`org:"St. Mary's"` is the
/// attribute `org:St. Mary's`).
fn tokenize(text: &str) -> Result<Vec<Token>, StateError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(p, _)| p).unwrap_or(text.len());
    let ch = |i: usize| chars.get(i).map(|&(_, c)| c);
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = ch(i) {
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            _ if c.is_ascii_digit() => {
                let start = i;
                let mut n: u64 = 0;
                while let Some(d) = ch(i).and_then(|d| d.to_digit(10)) {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or_else(|| perr(at(start), "threshold number too large"))?;
                    i += 1;
                }
                if !ends_token(ch(i)) {
                    return Err(perr(at(i), "a number must be followed by a space and OF"));
                }
                out.push(Token::Number(n));
                continue;
            }
            _ if c.is_ascii_alphabetic() => {
                let start = i;
                while ch(i).is_some_and(is_key_char) {
                    i += 1;
                }
                let word = &text[at(start)..at(i)];
                if ch(i) == Some(':') {
                    i += 1;
                    let mut value = String::new();
                    if ch(i) == Some('"') {
                        let open = i;
                        i += 1;
                        loop {
                            match ch(i) {
                                None => return Err(perr(at(open), "unterminated quoted value")),
                                Some('"') => break,
                                Some('\\') => match ch(i + 1) {
                                    Some(e @ ('"' | '\\')) => {
                                        value.push(e);
                                        i += 1;
                                    }
                                    _ => return Err(perr(at(i), "invalid escape")),
                                },
                                Some(q) if q.is_control() => {
                                    return Err(perr(at(i), "control character in a value"));
                                }
                                Some(q) => value.push(q),
                            }
                            i += 1;
                            if value.len() > MAX_ATTRIBUTE_LEN {
                                return Err(perr(at(start), "attribute too long"));
                            }
                        }
                        i += 1;
                        if !ends_token(ch(i)) {
                            return Err(perr(at(i), "unexpected character after a quoted value"));
                        }
                    } else {
                        while !ends_token(ch(i)) {
                            let q = ch(i).expect("invariant: not at the end");
                            if !is_bare_value_char(q) {
                                return Err(perr(
                                    at(i),
                                    "character not allowed in an unquoted value",
                                ));
                            }
                            value.push(q);
                            i += 1;
                            if value.len() > MAX_ATTRIBUTE_LEN {
                                return Err(perr(at(start), "attribute too long"));
                            }
                        }
                    }
                    let attr = format!("{word}:{value}");
                    check_attribute(&attr).map_err(|r| perr(at(start), &r.reason))?;
                    out.push(Token::Attr(attr));
                    continue;
                }
                if !ends_token(ch(i)) {
                    return Err(perr(at(i), "unexpected character in a keyword or key"));
                }
                let kw = if word.eq_ignore_ascii_case("and") {
                    Token::And
                } else if word.eq_ignore_ascii_case("or") {
                    Token::Or
                } else if word.eq_ignore_ascii_case("of") {
                    Token::Of
                } else {
                    return Err(perr(at(start), "expected key:value or AND, OR, OF"));
                };
                out.push(kw);
                continue;
            }
            _ => return Err(perr(at(i), "unexpected character")),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    leaves: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn expect(&mut self, t: Token, what: &str) -> Result<(), StateError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(StateError::Policy(format!(
                "expected {what} at token {}",
                self.pos
            )))
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Policy, StateError> {
        if depth > MAX_POLICY_DEPTH {
            return Err(StateError::Policy(format!(
                "nesting deeper than {MAX_POLICY_DEPTH}"
            )));
        }
        let mut terms = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            terms.push(self.and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("invariant: one term")
        } else {
            Policy::Or(terms)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Policy, StateError> {
        let mut terms = vec![self.atom(depth)?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            terms.push(self.atom(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("invariant: one term")
        } else {
            Policy::And(terms)
        })
    }

    fn atom(&mut self, depth: usize) -> Result<Policy, StateError> {
        match self.peek().cloned() {
            Some(Token::Open) => {
                self.pos += 1;
                let inner = self.expr(depth + 1)?;
                self.expect(Token::Close, "')'")?;
                Ok(inner)
            }
            Some(Token::Number(k)) if self.tokens.get(self.pos + 1) == Some(&Token::Of) => {
                self.pos += 2;
                self.expect(Token::Open, "'(' after 'of'")?;
                let mut of = vec![self.expr(depth + 1)?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    of.push(self.expr(depth + 1)?);
                }
                self.expect(Token::Close, "')' closing the threshold")?;
                let k = usize::try_from(k).unwrap_or(usize::MAX);
                if k == 0 || k > of.len() {
                    return Err(StateError::Policy(format!(
                        "threshold {k} of {} children",
                        of.len()
                    )));
                }
                Ok(Policy::Threshold { k, of })
            }
            Some(Token::Attr(a)) => {
                self.leaves += 1;
                if self.leaves > MAX_POLICY_LEAVES {
                    return Err(StateError::Policy(format!(
                        "more than {MAX_POLICY_LEAVES} attributes"
                    )));
                }
                self.pos += 1;
                Ok(Policy::Attr(a))
            }
            _ => Err(StateError::Policy(format!(
                "expected an attribute, '(' or a threshold at token {}",
                self.pos
            ))),
        }
    }
}

impl Policy {
    /// Parses policy text.
    pub fn parse(text: &str) -> Result<Policy, StateError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(StateError::Policy(format!(
                "longer than {MAX_POLICY_LEN} bytes"
            )));
        }
        let tokens = tokenize(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            leaves: 0,
        };
        let policy = p.expr(0)?;
        if p.pos != p.tokens.len() {
            return Err(StateError::Policy(format!(
                "unexpected token {} after the policy",
                p.pos
            )));
        }
        Ok(policy)
    }

    /// Whether a holder of the attributes for which `has` is true satisfies the policy.
    pub fn is_satisfied(&self, has: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Policy::Attr(a) => has(a),
            Policy::And(c) => c.iter().all(|p| p.is_satisfied(has)),
            Policy::Or(c) => c.iter().any(|p| p.is_satisfied(has)),
            Policy::Threshold { k, of } => {
                let mut held = 0;
                for p in of {
                    if p.is_satisfied(has) {
                        held += 1;
                        if held >= *k {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }

    /// The attributes the policy mentions.
    pub fn attributes(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            Policy::Attr(a) => {
                out.insert(a);
            }
            Policy::And(c) | Policy::Or(c) | Policy::Threshold { of: c, .. } => {
                for p in c {
                    p.collect(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sat(policy: &str, attrs: &[&str]) -> bool {
        Policy::parse(policy)
            .unwrap()
            .is_satisfied(&|a| attrs.contains(&a))
    }

    #[test]
    fn and_or_precedence() {
        let p = "role:researcher and irb:study-42 or dept:cardiology";
        assert!(sat(p, &["dept:cardiology"]));
        assert!(sat(p, &["role:researcher", "irb:study-42"]));
        assert!(!sat(p, &["role:researcher"]));
        let p = "role:researcher AND (irb:study-42 OR dept:cardiology)";
        assert!(!sat(p, &["dept:cardiology"]));
        assert!(sat(p, &["role:researcher", "dept:cardiology"]));
    }

    #[test]
    fn threshold() {
        let p = "2 of (x:a, x:b, x:c and x:d)";
        assert!(sat(p, &["x:a", "x:b"]));
        assert!(sat(p, &["x:a", "x:c", "x:d"]));
        assert!(!sat(p, &["x:a", "x:c"]));
        assert_eq!(
            Policy::parse(p)
                .unwrap()
                .attributes()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["x:a", "x:b", "x:c", "x:d"]
        );
    }

    #[test]
    fn quoted_and_rich_values() {
        let p = r#"org:"St. Mary's" or code:loinc|1234 or url:a/b@c+d#e:f"#;
        assert!(Policy::parse(p).is_err(), "'|' must be quoted");
        let p = r#"org:"St. Mary's" or code:"loinc|1234" or url:a/b@c+d#e:f or q:"a\"b\\c""#;
        let parsed = Policy::parse(p).unwrap();
        let attrs: Vec<&str> = parsed.attributes().into_iter().collect();
        assert_eq!(
            attrs,
            vec![
                "code:loinc|1234",
                "org:St. Mary's",
                r#"q:a"b\c"#,
                "url:a/b@c+d#e:f"
            ]
        );
        assert!(sat(p, &["org:St. Mary's"]));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "a:b and",
            "(a:b",
            "a:b)",
            "0 of (a:b)",
            "3 of (a:b, c:d)",
            "a:b c:d",
            "a:b & c:d",
            "or",
            "plain",
            "2 of a:b",
            "2of (a:b)",
            "1a:b",
            "a:",
            "a:\"unterminated",
            "a:\"bad\\escape\"",
            "a:\"\"",
            "a:\"x\"y",
            "99999999999999999999999 of (a:b)",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}a:b{}", "(".repeat(40), ")".repeat(40));
        assert!(Policy::parse(&deep).is_err());
        let wide = (0..300)
            .map(|i| format!("a:{i}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(Policy::parse(&wide).is_err());
        let long = format!("a:{}", "x".repeat(300));
        assert!(Policy::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in "[a-c0-9 (),:\"\\\\orandf]{0,80}") {
            let _ = Policy::parse(&s);
        }

        #[test]
        fn monotone(mask in 0u8..16, extra in 0u8..16) {
            let names = ["x:a", "x:b", "x:c", "x:d"];
            let p = Policy::parse("2 of (x:a, x:b and x:c, x:d) or (x:a and x:d)").unwrap();
            let small: Vec<&str> = (0..4).filter(|i| mask & (1 << i) != 0).map(|i| names[i]).collect();
            let big: Vec<&str> = (0..4).filter(|i| (mask | extra) & (1 << i) != 0).map(|i| names[i]).collect();
            if p.is_satisfied(&|a| small.contains(&a)) {
                prop_assert!(p.is_satisfied(&|a| big.contains(&a)));
            }
        }
    }
}
