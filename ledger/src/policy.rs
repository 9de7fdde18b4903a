//! A small monotone boolean policy language over attribute strings, evaluated by the ledger to
//! decide whether a participant's registered attributes satisfy a capsule's policy.
//!
//! ```text
//! expr   = and ("or" and)*
//! and    = atom ("and" atom)*
//! atom   = "(" expr ")" | K "of" "(" expr ("," expr)* ")" | ATTRIBUTE
//! ```
//!
//! Keywords are case-insensitive; attributes are `[A-Za-z0-9._:@/-]+` (not all digits, not a
//! keyword). Examples: `role:researcher and (irb:study-42 or dept:cardiology)`,
//! `2 of (a, b, c)`. The language is monotone (no negation), like the CP-ABE policies it
//! mirrors. Bounds: at most [`MAX_POLICY_LEAVES`] attributes and [`MAX_POLICY_DEPTH`] nesting.

use std::collections::BTreeSet;

use crate::error::StateError;
use crate::tx::{MAX_ATTRIBUTE_LEN, MAX_POLICY_LEN, check_attribute, is_attribute_byte};

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
enum Token<'a> {
    Open,
    Close,
    Comma,
    Word(&'a str),
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, StateError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b',' => {
                out.push(Token::Comma);
                i += 1;
            }
            _ if is_attribute_byte(b) => {
                let start = i;
                while i < bytes.len() && is_attribute_byte(bytes[i]) {
                    i += 1;
                }
                out.push(Token::Word(&text[start..i]));
            }
            _ => {
                return Err(StateError::Policy(format!(
                    "unexpected character at byte {i}"
                )));
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    leaves: usize,
}

fn is_kw(t: Option<&Token<'_>>, kw: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos)
    }

    fn expect(&mut self, t: Token<'static>, what: &str) -> Result<(), StateError> {
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
        while is_kw(self.peek(), "or") {
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
        while is_kw(self.peek(), "and") {
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
            Some(Token::Word(w))
                if w.bytes().all(|b| b.is_ascii_digit())
                    && is_kw(self.tokens.get(self.pos + 1), "of") =>
            {
                self.pos += 2;
                let k: usize = w
                    .parse()
                    .map_err(|_| StateError::Policy(format!("threshold {w} too large")))?;
                self.expect(Token::Open, "'(' after 'of'")?;
                let mut of = vec![self.expr(depth + 1)?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    of.push(self.expr(depth + 1)?);
                }
                self.expect(Token::Close, "')' closing the threshold")?;
                if k == 0 || k > of.len() {
                    return Err(StateError::Policy(format!(
                        "threshold {k} of {} children",
                        of.len()
                    )));
                }
                Ok(Policy::Threshold { k, of })
            }
            Some(Token::Word(w)) => {
                check_attribute(w).map_err(|r| StateError::Policy(r.reason))?;
                debug_assert!(w.len() <= MAX_ATTRIBUTE_LEN);
                self.leaves += 1;
                if self.leaves > MAX_POLICY_LEAVES {
                    return Err(StateError::Policy(format!(
                        "more than {MAX_POLICY_LEAVES} attributes"
                    )));
                }
                self.pos += 1;
                Ok(Policy::Attr(w.to_owned()))
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
        let p = "2 of (a, b, c and d)";
        assert!(sat(p, &["a", "b"]));
        assert!(sat(p, &["a", "c", "d"]));
        assert!(!sat(p, &["a", "c"]));
        assert_eq!(
            Policy::parse(p)
                .unwrap()
                .attributes()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["a", "b", "c", "d"]
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "a and",
            "(a",
            "a)",
            "0 of (a)",
            "3 of (a, b)",
            "a b",
            "a & b",
            "or",
            "2 of a",
            "99999999999999999999999 of (a)",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
        assert!(Policy::parse(&deep).is_err());
        let wide = (0..300)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(Policy::parse(&wide).is_err());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in "[a-c0-9 (),orandf]{0,80}") {
            let _ = Policy::parse(&s);
        }

        #[test]
        fn monotone(mask in 0u8..16, extra in 0u8..16) {
            let names = ["a", "b", "c", "d"];
            let p = Policy::parse("2 of (a, b and c, d) or (a and d)").unwrap();
            let small: Vec<&str> = (0..4).filter(|i| mask & (1 << i) != 0).map(|i| names[i]).collect();
            let big: Vec<&str> = (0..4).filter(|i| (mask | extra) & (1 << i) != 0).map(|i| names[i]).collect();
            if p.is_satisfied(&|a| small.contains(&a)) {
                prop_assert!(p.is_satisfied(&|a| big.contains(&a)));
            }
        }
    }
}
