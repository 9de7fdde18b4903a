//! The access-policy language and its compilation to an LSSS (monotone span program).
//!
//! # Grammar
//!
//! ```text
//! policy     = or_expr
//! or_expr    = and_expr ( OR and_expr )*
//! and_expr   = primary ( AND primary )*
//! primary    = "(" or_expr ")" | threshold | attribute
//! threshold  = NUMBER OF "(" or_expr ( "," or_expr )* ")"
//! attribute  = key ":" value
//! key        = ALPHA ( ALPHA | DIGIT | "_" | "." | "-" )*
//! value      = bare | quoted
//! bare       = ( ALPHA | DIGIT | "_" | "." | "-" | "/" | "@" | "+" | ":" | "#" )+
//! quoted     = '"' ( any character but '"', '\' or a control character | '\"' | '\\' )+ '"'
//! ```
//!
//! - `AND`, `OR` and `OF` are keywords, matched case-insensitively; `AND` binds tighter than `OR`.
//! - `k of (a, b, c)` is satisfied when at least `k` of its children are; `1 <= k <= n`.
//! - The attribute itself is the string `key:value` with the value unquoted, so
//!   `org:"St. Mary's"` names the attribute `org:St. Mary's`. Keys and values are case-sensitive.
//! - Limits keep hostile input cheap: at most [`MAX_POLICY_LEN`] bytes, [`MAX_LEAVES`] attribute
//!   occurrences, [`MAX_DEPTH`] levels of nesting, attributes of at most [`MAX_ATTRIBUTE_LEN`] bytes.
//! - `Display` prints a canonical form (lower-case keywords, minimal parentheses, values quoted
//!   only when needed) that parses back to an equal [`Policy`].
//!
//! # LSSS
//!
//! [`Policy::lsss`] compiles the formula into a matrix `M` with one row per attribute occurrence.
//! AND and OR gates use the Lewko-Waters construction (entries in {0, 1, -1}, reconstruction
//! coefficients all 1); a `k of n` gate with `1 < k < n` adds `k - 1` columns holding the powers
//! `x, x^2, ..., x^(k-1)` of the child's index `x`, i.e. Shamir sharing, and its reconstruction
//! coefficients are Lagrange coefficients at 0. For an authorised set, [`Lsss::reconstruct`]
//! returns rows `I` and coefficients `w` with `sum_{i in I} w_i M_i = (1, 0, ..., 0)`.

use std::collections::BTreeSet;
use std::fmt;

use ark_bls12_381::Fr;
use ark_ff::{Field, One, Zero};

use crate::error::PolicyError;

/// Longest accepted policy text, in bytes.
pub const MAX_POLICY_LEN: usize = 16 * 1024;
/// Most attribute occurrences (LSSS rows) in one policy.
pub const MAX_LEAVES: usize = 256;
/// Deepest accepted nesting of parentheses and gates.
pub const MAX_DEPTH: usize = 32;
/// Longest accepted attribute (`key:value`, value unquoted), in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 256;

/// A parsed access policy: a monotone formula of AND, OR and threshold gates over attributes.
///
/// Constructed only by [`Policy::parse`], so its tree is normalised: nested ANDs (and nested ORs)
/// are flattened and single parentheses removed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    root: Node,
}

/// One node of a policy's formula tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// An attribute `key:value` (value unquoted).
    Attr(String),
    /// All children must be satisfied (at least two children).
    And(Vec<Node>),
    /// At least one child must be satisfied (at least two children).
    Or(Vec<Node>),
    /// At least `k` of the children must be satisfied (`1 <= k <= children.len()`).
    Threshold {
        /// How many children must be satisfied.
        k: usize,
        /// The children.
        children: Vec<Node>,
    },
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Policies are public (they travel with every ciphertext), so printing them is fine.
        write!(f, "Policy({self})")
    }
}

/// Checks that `attr` is a well-formed attribute `key:value` (value unquoted).
pub fn validate_attribute(attr: &str) -> Result<(), PolicyError> {
    let bad = |reason: &'static str| PolicyError::InvalidAttribute {
        attribute: truncate_for_error(attr),
        reason,
    };
    if attr.len() > MAX_ATTRIBUTE_LEN {
        return Err(bad("longer than 256 bytes"));
    }
    let Some((key, value)) = attr.split_once(':') else {
        return Err(bad("missing ':' between key and value"));
    };
    let mut chars = key.chars();
    match chars.next() {
        None => return Err(bad("empty key")),
        Some(c) if !c.is_ascii_alphabetic() => return Err(bad("key must start with a letter")),
        Some(_) => {}
    }
    if !chars.all(is_key_char) {
        return Err(bad("key may hold only letters, digits, '_', '.' and '-'"));
    }
    if value.is_empty() {
        return Err(bad("empty value"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("value contains a control character"));
    }
    Ok(())
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_bare_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '@' | '+' | ':' | '#')
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | ',')
}

impl Policy {
    /// Parses a policy; the error says at which byte offset and why parsing failed.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLong {
                len: text.len(),
                max: MAX_POLICY_LEN,
            });
        }
        if text.trim().is_empty() {
            return Err(PolicyError::Empty);
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            end: text.len(),
            leaves: 0,
        };
        let root = parser.or_expr(0)?;
        if let Some(tok) = parser.peek() {
            return Err(PolicyError::Unexpected {
                pos: tok.pos,
                found: tok.kind.describe(),
                expected: "AND, OR or the end of the policy",
            });
        }
        Ok(Policy { root })
    }

    /// The root of the formula tree.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The distinct attributes the policy mentions, sorted.
    pub fn attributes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        collect_attrs(&self.root, &mut out);
        out
    }

    /// How many attribute occurrences (LSSS rows) the policy has.
    pub fn leaf_count(&self) -> usize {
        count_leaves(&self.root)
    }

    /// Whether a holder of `attrs` satisfies the policy.
    pub fn is_satisfied_by<I>(&self, attrs: I) -> bool
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let set: BTreeSet<String> = attrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        satisfied(&self.root, &set)
    }

    /// Compiles the policy into its LSSS matrix (see the module documentation).
    pub fn lsss(&self) -> Lsss {
        let mut builder = LsssBuilder {
            rows: Vec::new(),
            columns: 1,
        };
        builder.node(&self.root, vec![(0, Fr::one())]);
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        let mut occurrence = Vec::with_capacity(builder.rows.len());
        for (attr, _) in &builder.rows {
            let n = seen.entry(attr.as_str()).or_insert(0);
            occurrence.push(*n);
            *n += 1;
        }
        let rows = builder
            .rows
            .into_iter()
            .zip(occurrence)
            .map(|((attribute, entries), occurrence)| LsssRow {
                attribute,
                occurrence,
                entries,
            })
            .collect();
        Lsss {
            rows,
            columns: builder.columns,
            root: self.root.clone(),
        }
    }
}

fn collect_attrs(node: &Node, out: &mut BTreeSet<String>) {
    match node {
        Node::Attr(a) => {
            out.insert(a.clone());
        }
        Node::And(c) | Node::Or(c) | Node::Threshold { children: c, .. } => {
            c.iter().for_each(|n| collect_attrs(n, out))
        }
    }
}

fn count_leaves(node: &Node) -> usize {
    match node {
        Node::Attr(_) => 1,
        Node::And(c) | Node::Or(c) | Node::Threshold { children: c, .. } => {
            c.iter().map(count_leaves).sum()
        }
    }
}

fn satisfied(node: &Node, set: &BTreeSet<String>) -> bool {
    match node {
        Node::Attr(a) => set.contains(a),
        Node::And(c) => c.iter().all(|n| satisfied(n, set)),
        Node::Or(c) => c.iter().any(|n| satisfied(n, set)),
        Node::Threshold { k, children } => {
            children.iter().filter(|n| satisfied(n, set)).count() >= *k
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_node(&self.root, f)
    }
}

fn write_node(node: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match node {
        Node::Attr(a) => write_attr(a, f),
        Node::And(children) => {
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    f.write_str(" and ")?;
                }
                if matches!(c, Node::Or(_) | Node::And(_)) {
                    f.write_str("(")?;
                    write_node(c, f)?;
                    f.write_str(")")?;
                } else {
                    write_node(c, f)?;
                }
            }
            Ok(())
        }
        Node::Or(children) => {
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    f.write_str(" or ")?;
                }
                if matches!(c, Node::Or(_)) {
                    f.write_str("(")?;
                    write_node(c, f)?;
                    f.write_str(")")?;
                } else {
                    write_node(c, f)?;
                }
            }
            Ok(())
        }
        Node::Threshold { k, children } => {
            write!(f, "{k} of (")?;
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_node(c, f)?;
            }
            f.write_str(")")
        }
    }
}

fn write_attr(attr: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    // Invariant of `Policy`: every attribute passed `validate_attribute`, so it has a ':'.
    let (key, value) = attr
        .split_once(':')
        .expect("policy invariant: attributes are key:value");
    f.write_str(key)?;
    f.write_str(":")?;
    if value.chars().all(is_bare_value_char) {
        f.write_str(value)
    } else {
        f.write_str("\"")?;
        for c in value.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer and parser

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Of,
    Number(u64),
    Attr(String),
}

impl TokenKind {
    fn describe(&self) -> String {
        match self {
            TokenKind::LParen => "'('".into(),
            TokenKind::RParen => "')'".into(),
            TokenKind::Comma => "','".into(),
            TokenKind::And => "AND".into(),
            TokenKind::Or => "OR".into(),
            TokenKind::Of => "OF".into(),
            TokenKind::Number(n) => format!("the number {n}"),
            TokenKind::Attr(_) => "an attribute".into(),
        }
    }
}

#[derive(Debug)]
struct Token {
    kind: TokenKind,
    pos: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, PolicyError> {
    let mut tokens = Vec::new();
    let mut it = text.char_indices().peekable();
    while let Some(&(pos, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        let simple = match c {
            '(' => Some(TokenKind::LParen),
            ')' => Some(TokenKind::RParen),
            ',' => Some(TokenKind::Comma),
            _ => None,
        };
        if let Some(kind) = simple {
            it.next();
            tokens.push(Token { kind, pos });
            continue;
        }
        if c.is_ascii_digit() {
            let mut n: u64 = 0;
            while let Some(&(_, d)) = it.peek() {
                let Some(v) = d.to_digit(10) else { break };
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(v)))
                    .ok_or(PolicyError::Invalid {
                        pos,
                        reason: "number too large",
                    })?;
                it.next();
            }
            if let Some(&(p, d)) = it.peek()
                && !is_delimiter(d)
            {
                return Err(PolicyError::Invalid {
                    pos: p,
                    reason: "a number must be followed by a space and OF",
                });
            }
            tokens.push(Token {
                kind: TokenKind::Number(n),
                pos,
            });
            continue;
        }
        if c.is_ascii_alphabetic() {
            let mut word = String::new();
            while let Some(&(_, d)) = it.peek() {
                if !is_key_char(d) {
                    break;
                }
                word.push(d);
                it.next();
            }
            match it.peek() {
                Some(&(_, ':')) => {
                    it.next();
                    let value = read_value(text, &mut it, pos)?;
                    let attr = format!("{word}:{value}");
                    if attr.len() > MAX_ATTRIBUTE_LEN {
                        return Err(PolicyError::Invalid {
                            pos,
                            reason: "attribute longer than 256 bytes",
                        });
                    }
                    tokens.push(Token {
                        kind: TokenKind::Attr(attr),
                        pos,
                    });
                }
                Some(&(p, d)) if !is_delimiter(d) => {
                    return Err(PolicyError::Invalid {
                        pos: p,
                        reason: "unexpected character in a keyword or attribute key",
                    });
                }
                _ => {
                    let kind = if word.eq_ignore_ascii_case("and") {
                        TokenKind::And
                    } else if word.eq_ignore_ascii_case("or") {
                        TokenKind::Or
                    } else if word.eq_ignore_ascii_case("of") {
                        TokenKind::Of
                    } else {
                        return Err(PolicyError::Invalid {
                            pos,
                            reason: "expected an attribute key:value or a keyword (AND, OR, OF)",
                        });
                    };
                    tokens.push(Token { kind, pos });
                }
            }
            continue;
        }
        return Err(PolicyError::Invalid {
            pos,
            reason: "unexpected character",
        });
    }
    Ok(tokens)
}

fn read_value(
    text: &str,
    it: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    attr_pos: usize,
) -> Result<String, PolicyError> {
    let mut value = String::new();
    match it.peek() {
        None => {
            return Err(PolicyError::Invalid {
                pos: text.len(),
                reason: "missing attribute value after ':'",
            });
        }
        Some(&(qpos, '"')) => {
            it.next();
            loop {
                match it.next() {
                    None => {
                        return Err(PolicyError::Invalid {
                            pos: qpos,
                            reason: "unterminated quoted value",
                        });
                    }
                    Some((_, '"')) => break,
                    Some((epos, '\\')) => match it.next() {
                        Some((_, c @ ('"' | '\\'))) => value.push(c),
                        _ => {
                            return Err(PolicyError::Invalid {
                                pos: epos,
                                reason: "invalid escape (only \\\" and \\\\ are allowed)",
                            });
                        }
                    },
                    Some((cpos, c)) if c.is_control() => {
                        let _ = c;
                        return Err(PolicyError::Invalid {
                            pos: cpos,
                            reason: "control character in a quoted value",
                        });
                    }
                    Some((_, c)) => value.push(c),
                }
                if value.len() > MAX_ATTRIBUTE_LEN {
                    return Err(PolicyError::Invalid {
                        pos: attr_pos,
                        reason: "attribute longer than 256 bytes",
                    });
                }
            }
            if value.is_empty() {
                return Err(PolicyError::Invalid {
                    pos: qpos,
                    reason: "empty attribute value",
                });
            }
            if let Some(&(p, d)) = it.peek()
                && !is_delimiter(d)
            {
                return Err(PolicyError::Invalid {
                    pos: p,
                    reason: "unexpected character after a quoted value",
                });
            }
        }
        Some(_) => {
            while let Some(&(p, d)) = it.peek() {
                if is_delimiter(d) {
                    break;
                }
                if !is_bare_value_char(d) {
                    return Err(PolicyError::Invalid {
                        pos: p,
                        reason: "character not allowed in an unquoted value (quote the value)",
                    });
                }
                value.push(d);
                it.next();
                if value.len() > MAX_ATTRIBUTE_LEN {
                    return Err(PolicyError::Invalid {
                        pos: attr_pos,
                        reason: "attribute longer than 256 bytes",
                    });
                }
            }
            if value.is_empty() {
                let pos = it.peek().map_or(text.len(), |&(p, _)| p);
                return Err(PolicyError::Invalid {
                    pos,
                    reason: "missing attribute value after ':'",
                });
            }
        }
    }
    Ok(value)
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    end: usize,
    leaves: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next_pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn expect(&mut self, kind: &TokenKind, expected: &'static str) -> Result<(), PolicyError> {
        match self.peek() {
            Some(t) if &t.kind == kind => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(PolicyError::Unexpected {
                pos: t.pos,
                found: t.kind.describe(),
                expected,
            }),
            None => Err(PolicyError::UnexpectedEnd {
                pos: self.end,
                expected,
            }),
        }
    }

    fn or_expr(&mut self, depth: usize) -> Result<Node, PolicyError> {
        let mut items = vec![self.and_expr(depth)?];
        while matches!(self.peek(), Some(t) if t.kind == TokenKind::Or) {
            self.pos += 1;
            items.push(self.and_expr(depth)?);
        }
        Ok(flatten(items, false))
    }

    fn and_expr(&mut self, depth: usize) -> Result<Node, PolicyError> {
        let mut items = vec![self.primary(depth)?];
        while matches!(self.peek(), Some(t) if t.kind == TokenKind::And) {
            self.pos += 1;
            items.push(self.primary(depth)?);
        }
        Ok(flatten(items, true))
    }

    fn primary(&mut self, depth: usize) -> Result<Node, PolicyError> {
        const EXPECTED: &str = "an attribute, '(' or a threshold 'k of (...)'";
        let Some(tok) = self.peek() else {
            return Err(PolicyError::UnexpectedEnd {
                pos: self.end,
                expected: EXPECTED,
            });
        };
        let tok_pos = tok.pos;
        match &tok.kind {
            TokenKind::Attr(a) => {
                let a = a.clone();
                self.pos += 1;
                self.leaves += 1;
                if self.leaves > MAX_LEAVES {
                    return Err(PolicyError::TooManyAttributes { max: MAX_LEAVES });
                }
                Ok(Node::Attr(a))
            }
            TokenKind::LParen => {
                if depth + 1 > MAX_DEPTH {
                    return Err(PolicyError::TooDeep {
                        pos: tok_pos,
                        max: MAX_DEPTH,
                    });
                }
                self.pos += 1;
                let inner = self.or_expr(depth + 1)?;
                self.expect(&TokenKind::RParen, "')' or AND/OR")?;
                Ok(inner)
            }
            TokenKind::Number(k) => {
                let k = *k;
                if depth + 1 > MAX_DEPTH {
                    return Err(PolicyError::TooDeep {
                        pos: tok_pos,
                        max: MAX_DEPTH,
                    });
                }
                self.pos += 1;
                self.expect(&TokenKind::Of, "OF after the threshold number")?;
                self.expect(&TokenKind::LParen, "'(' after OF")?;
                let mut children = vec![self.or_expr(depth + 1)?];
                loop {
                    match self.peek() {
                        Some(t) if t.kind == TokenKind::Comma => {
                            self.pos += 1;
                            children.push(self.or_expr(depth + 1)?);
                        }
                        _ => break,
                    }
                }
                self.expect(&TokenKind::RParen, "',' or ')' closing the threshold")?;
                let n = children.len();
                if k == 0 || k > n as u64 {
                    return Err(PolicyError::ThresholdOutOfRange { pos: tok_pos, k, n });
                }
                Ok(Node::Threshold {
                    k: k as usize,
                    children,
                })
            }
            other => Err(PolicyError::Unexpected {
                pos: self.next_pos(),
                found: other.describe(),
                expected: EXPECTED,
            }),
        }
    }
}

fn flatten(items: Vec<Node>, and: bool) -> Node {
    if items.len() == 1 {
        return items.into_iter().next().expect("one item");
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Node::And(c) if and => out.extend(c),
            Node::Or(c) if !and => out.extend(c),
            other => out.push(other),
        }
    }
    if and { Node::And(out) } else { Node::Or(out) }
}

// ---------------------------------------------------------------------------------------------
// LSSS

/// One row of an LSSS matrix: the attribute it is labelled with and its sparse entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsssRow {
    /// The attribute `rho(i)` labelling the row.
    pub attribute: String,
    /// How many earlier rows carry the same attribute (0 for the first occurrence).
    pub occurrence: usize,
    /// Non-zero entries as (column, value).
    pub entries: Vec<(usize, Fr)>,
}

/// The LSSS (monotone span program) compiled from a [`Policy`].
#[derive(Clone, Debug)]
pub struct Lsss {
    rows: Vec<LsssRow>,
    columns: usize,
    root: Node,
}

struct LsssBuilder {
    rows: Vec<(String, Vec<(usize, Fr)>)>,
    columns: usize,
}

fn add_entry(v: &mut Vec<(usize, Fr)>, col: usize, val: Fr) {
    if !val.is_zero() {
        v.push((col, val));
    }
}

impl LsssBuilder {
    fn node(&mut self, node: &Node, v: Vec<(usize, Fr)>) {
        match node {
            Node::Attr(a) => self.rows.push((a.clone(), v)),
            Node::Or(children) => {
                for c in children {
                    self.node(c, v.clone());
                }
            }
            Node::And(children) => self.and(children, v),
            Node::Threshold { k, children } => {
                let n = children.len();
                if *k == 1 {
                    for c in children {
                        self.node(c, v.clone());
                    }
                } else if *k == n {
                    self.and(children, v);
                } else {
                    let base = self.columns;
                    self.columns += k - 1;
                    for (i, c) in children.iter().enumerate() {
                        let x = Fr::from((i + 1) as u64);
                        let mut w = v.clone();
                        let mut p = x;
                        for j in 0..k - 1 {
                            add_entry(&mut w, base + j, p);
                            p *= x;
                        }
                        self.node(c, w);
                    }
                }
            }
        }
    }

    /// Lewko-Waters n-ary AND: child 1 gets v + e_{c}, child i gets -e_{c+i-2} + e_{c+i-1},
    /// the last child gets -e_{c+m-2}; the shares sum to the parent's.
    fn and(&mut self, children: &[Node], v: Vec<(usize, Fr)>) {
        let m = children.len();
        let base = self.columns;
        self.columns += m - 1;
        for (i, c) in children.iter().enumerate() {
            let mut w = if i == 0 { v.clone() } else { Vec::new() };
            if i > 0 {
                add_entry(&mut w, base + i - 1, -Fr::one());
            }
            if i + 1 < m {
                add_entry(&mut w, base + i, Fr::one());
            }
            self.node(c, w);
        }
    }
}

impl Lsss {
    /// The rows, in the order of the attribute occurrences in the policy text.
    pub fn rows(&self) -> &[LsssRow] {
        &self.rows
    }

    /// The number of columns `n2`.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The largest number of times one attribute occurs (`tau`), at least 1.
    pub fn max_occurrence(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.occurrence + 1)
            .max()
            .unwrap_or(1)
    }

    /// The share of row `i` for the secret vector `v` (`v[0]` is the secret): `M_i . v`.
    ///
    /// # Panics
    /// If `v` is shorter than [`Lsss::columns`] (a caller bug).
    pub fn share(&self, i: usize, v: &[Fr]) -> Fr {
        assert!(v.len() >= self.columns, "LSSS share: vector too short");
        self.rows[i]
            .entries
            .iter()
            .fold(Fr::zero(), |acc, (c, e)| acc + v[*c] * e)
    }

    /// For an authorised set, rows `i` and coefficients `w_i` with `sum w_i M_i = e_1`;
    /// `None` if the set does not satisfy the policy.
    pub fn reconstruct<I>(&self, attrs: I) -> Option<Vec<(usize, Fr)>>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let set: BTreeSet<String> = attrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut next_leaf = 0;
        let out = solve(&self.root, &set, &mut next_leaf)?;
        Some(out)
    }
}

/// Returns the (row, coefficient) list reconstructing this node's share, or `None`.
/// `next_leaf` is the index of this subtree's first row; it is advanced past the subtree.
fn solve(node: &Node, set: &BTreeSet<String>, next_leaf: &mut usize) -> Option<Vec<(usize, Fr)>> {
    match node {
        Node::Attr(a) => {
            let i = *next_leaf;
            *next_leaf += 1;
            set.contains(a).then(|| vec![(i, Fr::one())])
        }
        Node::And(children) => and_solve(children, set, next_leaf),
        Node::Or(children) => or_solve(children, set, next_leaf),
        Node::Threshold { k, children } => {
            let n = children.len();
            if *k == 1 {
                return or_solve(children, set, next_leaf);
            }
            if *k == n {
                return and_solve(children, set, next_leaf);
            }
            let mut sols: Vec<(usize, Vec<(usize, Fr)>)> = Vec::new();
            for (i, c) in children.iter().enumerate() {
                if let Some(s) = solve(c, set, next_leaf) {
                    sols.push((i + 1, s));
                }
            }
            if sols.len() < *k {
                return None;
            }
            // Use the k children with the fewest rows.
            sols.sort_by_key(|(_, s)| s.len());
            sols.truncate(*k);
            let xs: Vec<Fr> = sols.iter().map(|(x, _)| Fr::from(*x as u64)).collect();
            let mut out = Vec::new();
            for (j, (_, s)) in sols.into_iter().enumerate() {
                let lambda = lagrange_at_zero(&xs, j);
                out.extend(s.into_iter().map(|(r, w)| (r, w * lambda)));
            }
            Some(out)
        }
    }
}

fn and_solve(
    children: &[Node],
    set: &BTreeSet<String>,
    next_leaf: &mut usize,
) -> Option<Vec<(usize, Fr)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for c in children {
        // Keep walking so that `next_leaf` stays right even after a failure.
        match solve(c, set, next_leaf) {
            Some(s) if ok => out.extend(s),
            Some(_) => {}
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn or_solve(
    children: &[Node],
    set: &BTreeSet<String>,
    next_leaf: &mut usize,
) -> Option<Vec<(usize, Fr)>> {
    let mut best: Option<Vec<(usize, Fr)>> = None;
    for c in children {
        if let Some(s) = solve(c, set, next_leaf)
            && best.as_ref().is_none_or(|b| s.len() < b.len())
        {
            best = Some(s);
        }
    }
    best
}

/// The Lagrange coefficient at 0 of point `xs[j]` over the points `xs` (distinct, non-zero).
pub(crate) fn lagrange_at_zero(xs: &[Fr], j: usize) -> Fr {
    let xj = xs[j];
    let mut num = Fr::one();
    let mut den = Fr::one();
    for (m, xm) in xs.iter().enumerate() {
        if m != j {
            num *= xm;
            den *= *xm - xj;
        }
    }
    num * den
        .inverse()
        .expect("Lagrange invariant: interpolation points are distinct")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Policy {
        Policy::parse(s).unwrap_or_else(|e| panic!("parse {s:?}: {e}"))
    }

    fn err_pos(s: &str) -> usize {
        match Policy::parse(s).expect_err("must fail") {
            PolicyError::Invalid { pos, .. }
            | PolicyError::Unexpected { pos, .. }
            | PolicyError::UnexpectedEnd { pos, .. }
            | PolicyError::TooDeep { pos, .. }
            | PolicyError::ThresholdOutOfRange { pos, .. } => pos,
            other => panic!("no position in {other:?}"),
        }
    }

    #[test]
    fn parses_attributes_and_quoted_values() {
        let pol = p(r#"role:researcher AND org:"St. Mary's" and irb:study-42"#);
        assert_eq!(
            pol.attributes().into_iter().collect::<Vec<_>>(),
            vec!["irb:study-42", "org:St. Mary's", "role:researcher"]
        );
        assert_eq!(
            pol.to_string(),
            r#"role:researcher and org:"St. Mary's" and irb:study-42"#
        );
        let q = p(r#"note:"say \"hi\" \\ bye""#);
        assert_eq!(
            q.attributes().into_iter().next().unwrap(),
            r#"note:say "hi" \ bye"#
        );
        assert_eq!(Policy::parse(&q.to_string()).unwrap(), q);
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let pol = p("a:1 or b:1 and c:1");
        assert_eq!(
            pol.root(),
            &Node::Or(vec![
                Node::Attr("a:1".into()),
                Node::And(vec![Node::Attr("b:1".into()), Node::Attr("c:1".into())])
            ])
        );
        assert!(pol.is_satisfied_by(["a:1"]));
        assert!(!pol.is_satisfied_by(["b:1"]));
        assert!(pol.is_satisfied_by(["b:1", "c:1"]));
        let par = p("(a:1 or b:1) and c:1");
        assert!(!par.is_satisfied_by(["a:1"]));
        assert_eq!(par.to_string(), "(a:1 or b:1) and c:1");
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(p("a:x AnD b:y OR c:z"), p("a:x and b:y or c:z"));
        assert_eq!(p("2 OF (a:x, b:y, c:z)"), p("2 of (a:x, b:y, c:z)"));
    }

    #[test]
    fn error_positions() {
        assert_eq!(err_pos("a:x and"), 7);
        assert_eq!(err_pos("a:x and )"), 8);
        assert_eq!(err_pos("a:x b:y"), 4);
        assert_eq!(err_pos("(a:x or b:y"), 11);
        assert_eq!(err_pos("a:x and role"), 8);
        assert_eq!(err_pos("a:x and b:"), 10);
        assert_eq!(err_pos(r#"org:"unterminated"#), 4);
        assert_eq!(err_pos("a:x & b:y"), 4);
        assert_eq!(err_pos("a:b$c"), 3);
        assert_eq!(err_pos("4 of (a:x, b:y)"), 0);
        assert_eq!(err_pos("0 of (a:x, b:y)"), 0);
        assert_eq!(err_pos("a:x or 2 (b:y)"), 9);
        assert_eq!(err_pos(r#"a:"x\n""#), 4);
        assert!(matches!(Policy::parse("   "), Err(PolicyError::Empty)));
        let msg = Policy::parse("a:x and )").unwrap_err().to_string();
        assert!(msg.contains("byte 8"), "{msg}");
    }

    #[test]
    fn limits_reject_hostile_input() {
        let deep = format!("{}a:x{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(
            Policy::parse(&deep),
            Err(PolicyError::TooLong { .. })
        ));
        let deep = format!("{}a:x{}", "(".repeat(100), ")".repeat(100));
        assert!(matches!(
            Policy::parse(&deep),
            Err(PolicyError::TooDeep { .. })
        ));
        let many = (0..300)
            .map(|i| format!("a:{i}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(matches!(
            Policy::parse(&many),
            Err(PolicyError::TooManyAttributes { .. })
        ));
        let long = format!("a:{}", "x".repeat(300));
        assert!(Policy::parse(&long).is_err());
    }

    #[test]
    fn thresholds_match_and_or() {
        let universe = ["a:1", "b:1", "c:1"];
        let one = p("1 of (a:1, b:1, c:1)");
        let or = p("a:1 or b:1 or c:1");
        let all = p("3 of (a:1, b:1, c:1)");
        let and = p("a:1 and b:1 and c:1");
        for mask in 0u8..8 {
            let set: Vec<&str> = (0..3)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| universe[i])
                .collect();
            assert_eq!(one.is_satisfied_by(&set), or.is_satisfied_by(&set));
            assert_eq!(all.is_satisfied_by(&set), and.is_satisfied_by(&set));
            for pol in [&one, &or, &all, &and] {
                check_reconstruction(pol, &set);
            }
        }
    }

    #[test]
    fn validate_attribute_rules() {
        assert!(validate_attribute("role:researcher").is_ok());
        assert!(validate_attribute("org:St. Mary's").is_ok());
        for bad in ["role", ":x", "1a:x", "ro le:x", "role:", "a:\u{7}"] {
            assert!(validate_attribute(bad).is_err(), "{bad}");
        }
    }

    /// Checks `sum w_i M_i = e_1` over the returned rows, that they are held, and that
    /// `reconstruct` agrees with `is_satisfied_by`.
    fn check_reconstruction(pol: &Policy, set: &[&str]) {
        let lsss = pol.lsss();
        let sol = lsss.reconstruct(set);
        assert_eq!(sol.is_some(), pol.is_satisfied_by(set), "{pol} {set:?}");
        if let Some(sol) = sol {
            let mut acc = vec![Fr::zero(); lsss.columns()];
            for (i, w) in &sol {
                assert!(set.contains(&lsss.rows()[*i].attribute.as_str()));
                for (c, e) in &lsss.rows()[*i].entries {
                    acc[*c] += *w * e;
                }
            }
            assert_eq!(acc[0], Fr::one(), "{pol}");
            assert!(acc[1..].iter().all(Zero::is_zero), "{pol}");
        }
    }

    fn arb_node() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec!["a:1", "b:2", "c:3", "d:4", "e:5", "f:6"])
            .prop_map(str::to_owned);
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4)
                    .prop_map(|v| format!("({})", v.join(" and "))),
                prop::collection::vec(inner.clone(), 2..4)
                    .prop_map(|v| format!("({})", v.join(" OR "))),
                (
                    prop::collection::vec(inner, 1..5),
                    any::<prop::sample::Index>()
                )
                    .prop_map(|(v, k)| format!(
                        "{} of ({})",
                        k.index(v.len()) + 1,
                        v.join(", ")
                    )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn display_round_trips(text in arb_node()) {
            let pol = p(&text);
            let again = p(&pol.to_string());
            prop_assert_eq!(&again, &pol);
            prop_assert_eq!(again.to_string(), pol.to_string());
        }

        #[test]
        fn lsss_reconstructs_exactly_when_satisfied(
            text in arb_node(),
            mask in 0u8..64,
        ) {
            let pol = p(&text);
            let universe = ["a:1", "b:2", "c:3", "d:4", "e:5", "f:6"];
            let set: Vec<&str> = (0..6).filter(|i| mask >> i & 1 == 1).map(|i| universe[i]).collect();
            check_reconstruction(&pol, &set);
        }

        #[test]
        fn parse_never_panics(text in ".{0,64}") {
            let _ = Policy::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_grammar_soup(
            parts in prop::collection::vec(
                prop::sample::select(vec!["(", ")", ",", " and ", " or ", "2 of", "a:1", "\"", "b:\"x y\"", "0", "of", ":"]),
                0..24,
            )
        ) {
            let _ = Policy::parse(&parts.concat());
        }
    }
}
