//! GBNF, llama.cpp's grammar format, parsed into flat rule tables.
//!
//! ```text
//! root   ::= object
//! object ::= "{" ws ( pair ( "," ws pair )* )? "}"
//! pair   ::= string ":" ws value      # a comment
//! digit  ::= [0-9]
//! name   ::= [a-zA-Z_] [a-zA-Z0-9_]{0,31}
//! ```
//!
//! Terms are `"literals"` (escapes `\n \r \t \\ \" \[ \] \xHH \uHHHH
//! \UHHHHHHHH`), character classes `[a-z_]` / `[^"\\]`, `.` (any character),
//! rule references and `( groups )`; each may be followed by `*`, `+`, `?`,
//! `{m}`, `{m,}`, `{m,n}` or `{,n}`. Alternatives are separated by `|`. A rule
//! runs until the next `name ::=` (llama.cpp ends it at the end of its line
//! unless inside parentheses or after `|`; every grammar it reads is read the
//! same here). Groups and repetitions become generated rules, as in
//! llama.cpp, so the matcher only sees sequences of character classes and
//! rule references.
//!
//! Checked when parsing: undefined rules, a missing `root`, rules defined
//! twice, left recursion (the matcher would expand it forever), and sizes
//! (repetition counts, nesting depth, total elements) that would make a
//! hostile grammar exhaust memory.

use std::collections::HashMap;
use std::fmt;

/// Largest `n` in `{m,n}`.
const MAX_REPEAT: u32 = 10_000;
/// Deepest nesting of parentheses.
const MAX_NESTING: usize = 64;
/// Most elements in all rules together, repetitions expanded.
const MAX_ELEMS: usize = 1 << 20;

/// One element of a rule's alternative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Elem {
    /// The end of an alternative.
    End,
    /// A reference to rule `.0`.
    Rule(u32),
    /// One character of class `.0`.
    Class(u32),
}

/// A set of code points: ranges, possibly negated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Class {
    pub(super) ranges: Vec<(u32, u32)>,
    pub(super) negated: bool,
}

impl Class {
    pub(super) fn matches(&self, c: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) != self.negated
    }

    /// Whether some code point in `lo..=hi` is in the class.
    pub(super) fn intersects(&self, lo: u32, hi: u32) -> bool {
        if self.negated {
            // Unless the ranges cover all of lo..=hi, something is left.
            let mut next = lo;
            let mut sorted = self.ranges.clone();
            sorted.sort_unstable();
            for (a, b) in sorted {
                if a > next {
                    break;
                }
                next = next.max(b.saturating_add(1));
            }
            next <= hi
        } else {
            self.ranges.iter().any(|&(a, b)| a <= hi && b >= lo)
        }
    }
}

/// A parsed GBNF grammar.
///
/// All alternatives live in one element array, each ending in
/// [`Elem::End`]; a matcher position is an index into it.
#[derive(Clone, Debug)]
pub struct Grammar {
    pub(super) elems: Vec<Elem>,
    /// Per rule, the start of each alternative in `elems`.
    pub(super) rules: Vec<Vec<u32>>,
    pub(super) classes: Vec<Class>,
    pub(super) names: Vec<String>,
    pub(super) root: u32,
}

/// Why a grammar could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrammarError {
    /// A syntax error at a line and column (1-based).
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A rule is referenced but never defined.
    UndefinedRule(String),
    /// A rule is defined twice.
    DuplicateRule(String),
    /// There is no `root` rule.
    NoRoot,
    /// A rule can reach itself without consuming a character.
    LeftRecursion(String),
    /// The grammar is too large (repetitions expanded).
    TooLarge,
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrammarError::Syntax {
                line,
                column,
                message,
            } => write!(f, "grammar syntax error at {line}:{column}: {message}"),
            GrammarError::UndefinedRule(r) => {
                write!(f, "grammar rule `{r}` is used but not defined")
            }
            GrammarError::DuplicateRule(r) => write!(f, "grammar rule `{r}` is defined twice"),
            GrammarError::NoRoot => write!(f, "the grammar has no `root` rule"),
            GrammarError::LeftRecursion(r) => write!(
                f,
                "grammar rule `{r}` is left-recursive (it can reach itself before any character)"
            ),
            GrammarError::TooLarge => write!(
                f,
                "the grammar is too large (over {MAX_ELEMS} elements with repetitions expanded)"
            ),
        }
    }
}

impl std::error::Error for GrammarError {}

/// A sequence being built: elements without the final `End`.
type Seq = Vec<Elem>;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Rule ids by name (referenced or defined).
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Alternatives of each rule; `None` until defined.
    bodies: Vec<Option<Vec<Seq>>>,
    classes: Vec<Class>,
    n_elems: usize,
}

impl Grammar {
    /// Parses a GBNF grammar; `root` is its start rule.
    pub fn parse(src: &str) -> Result<Grammar, GrammarError> {
        let mut p = Parser {
            src,
            pos: 0,
            ids: HashMap::new(),
            names: Vec::new(),
            bodies: Vec::new(),
            classes: Vec::new(),
            n_elems: 0,
        };
        p.skip_space(true);
        while p.pos < src.len() {
            p.parse_rule()?;
            p.skip_space(true);
        }
        p.finish()
    }

    /// The number of rules, generated ones included.
    pub fn n_rules(&self) -> usize {
        self.rules.len()
    }

    pub(super) fn class(&self, i: u32) -> &Class {
        &self.classes[i as usize]
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, GrammarError> {
        let before = &self.src[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Err(GrammarError::Syntax {
            line,
            column,
            message: message.into(),
        })
    }

    /// Skips spaces and comments; newlines too when `newlines`.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' {
                let end = self.rest().find('\n').unwrap_or(self.rest().len());
                self.pos += end;
            } else if c == ' ' || c == '\t' || ((c == '\n' || c == '\r') && newlines) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// Whether a rule definition (`name ::=`) or the end of input comes next,
    /// spaces and newlines skipped.
    fn at_rule_start(&self) -> bool {
        let mut look = Parser {
            src: self.src,
            pos: self.pos,
            ids: HashMap::new(),
            names: Vec::new(),
            bodies: Vec::new(),
            classes: Vec::new(),
            n_elems: 0,
        };
        look.skip_space(true);
        if look.pos >= self.src.len() {
            return true;
        }
        if look.name().is_empty() {
            return false;
        }
        look.skip_space(false);
        look.rest().starts_with("::=")
    }

    fn rule_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        self.bodies.push(None);
        id
    }

    /// A new rule for a group, named after its parent.
    fn generated_rule(&mut self, parent: u32, alts: Vec<Seq>) -> Result<u32, GrammarError> {
        let id = self.rule_id_generated(parent);
        self.define(id, alts)?;
        Ok(id)
    }

    fn define(&mut self, id: u32, alts: Vec<Seq>) -> Result<(), GrammarError> {
        self.n_elems += alts.iter().map(|a| a.len() + 1).sum::<usize>();
        if self.n_elems > MAX_ELEMS {
            return Err(GrammarError::TooLarge);
        }
        self.bodies[id as usize] = Some(alts);
        Ok(())
    }

    fn parse_rule(&mut self) -> Result<(), GrammarError> {
        let name = self.name();
        if name.is_empty() {
            return self.error("expected a rule name");
        }
        self.skip_space(false);
        if !self.rest().starts_with("::=") {
            return self.error(format!("expected `::=` after `{name}`"));
        }
        self.pos += 3;
        let id = self.rule_id(name);
        if self.bodies[id as usize].is_some() {
            return Err(GrammarError::DuplicateRule(name.to_owned()));
        }
        // Reserve the definition so a self-reference in the body is fine
        // and a second definition is caught.
        self.bodies[id as usize] = Some(Vec::new());
        let alts = self.parse_alternates(id, 0)?;
        self.define(id, alts)
    }

    fn parse_alternates(&mut self, rule: u32, depth: usize) -> Result<Vec<Seq>, GrammarError> {
        let mut alts = vec![self.parse_sequence(rule, depth)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.skip_space(true);
            alts.push(self.parse_sequence(rule, depth)?);
        }
        Ok(alts)
    }

    /// A sequence up to `|`, `)` or the end of the rule.
    fn parse_sequence(&mut self, rule: u32, depth: usize) -> Result<Seq, GrammarError> {
        let mut seq = Seq::new();
        // Where the last term's elements start in `seq` (for a postfix).
        let mut last: Option<usize> = None;
        loop {
            self.skip_space(depth > 0);
            let Some(c) = self.peek() else { break };
            match c {
                '|' | ')' => break,
                '\n' | '\r' => {
                    if self.at_rule_start() {
                        break;
                    }
                    self.skip_space(true);
                    continue;
                }
                '"' => {
                    last = Some(seq.len());
                    self.pos += 1;
                    self.parse_literal(&mut seq)?;
                }
                '[' => {
                    last = Some(seq.len());
                    self.pos += 1;
                    let class = self.parse_class()?;
                    seq.push(Elem::Class(self.add_class(class)));
                }
                '.' => {
                    last = Some(seq.len());
                    self.pos += 1;
                    let any = self.add_class(Class {
                        ranges: Vec::new(),
                        negated: true,
                    });
                    seq.push(Elem::Class(any));
                }
                '(' => {
                    if depth >= MAX_NESTING {
                        return self.error("parentheses nested too deeply");
                    }
                    last = Some(seq.len());
                    self.pos += 1;
                    self.skip_space(true);
                    let alts = self.parse_alternates(rule, depth + 1)?;
                    self.skip_space(true);
                    if self.peek() != Some(')') {
                        return self.error("expected `)`");
                    }
                    self.pos += 1;
                    let sub = self.generated_rule(rule, alts)?;
                    seq.push(Elem::Rule(sub));
                }
                '*' | '+' | '?' | '{' => {
                    let Some(start) = last.take() else {
                        return self.error(format!("`{c}` must follow a term"));
                    };
                    let (min, max) = self.parse_repetition()?;
                    let term: Seq = seq.drain(start..).collect();
                    self.repeat(rule, &mut seq, term, min, max)?;
                }
                '<' => return self.error("token references (`<...>`) are not supported"),
                c if is_name_char(c) => {
                    let save = self.pos;
                    let name = self.name();
                    self.skip_space(false);
                    if self.rest().starts_with("::=") {
                        // The next rule, on the same line as this one's end.
                        self.pos = save;
                        if depth > 0 {
                            return self.error("expected `)` before the next rule");
                        }
                        break;
                    }
                    last = Some(seq.len());
                    let id = self.rule_id(name);
                    seq.push(Elem::Rule(id));
                }
                c => return self.error(format!("unexpected `{c}`")),
            }
        }
        Ok(seq)
    }

    fn add_class(&mut self, class: Class) -> u32 {
        if let Some(i) = self.classes.iter().position(|c| *c == class) {
            return i as u32;
        }
        self.classes.push(class);
        (self.classes.len() - 1) as u32
    }

    /// One character of a literal or a class, escapes decoded.
    fn parse_char(&mut self) -> Result<u32, GrammarError> {
        let Some(c) = self.peek() else {
            return self.error("unexpected end of grammar");
        };
        self.pos += c.len_utf8();
        if c != '\\' {
            return Ok(c as u32);
        }
        let Some(e) = self.peek() else {
            return self.error("unexpected end of grammar after `\\`");
        };
        self.pos += e.len_utf8();
        let hex_digits = match e {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            'n' => return Ok('\n' as u32),
            'r' => return Ok('\r' as u32),
            't' => return Ok('\t' as u32),
            '0' => return Ok(0),
            '\\' | '"' | '[' | ']' | '-' | '^' | '/' | '\'' => return Ok(e as u32),
            _ => return self.error(format!("unknown escape `\\{e}`")),
        };
        let digits = self.rest().get(..hex_digits).unwrap_or("");
        match u32::from_str_radix(digits, 16) {
            Ok(v)
                if digits.len() == hex_digits && digits.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                self.pos += hex_digits;
                Ok(v)
            }
            _ => self.error(format!("expected {hex_digits} hex digits after `\\{e}`")),
        }
    }

    fn parse_literal(&mut self, seq: &mut Seq) -> Result<(), GrammarError> {
        loop {
            match self.peek() {
                None => return self.error("unterminated string literal"),
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => {
                    let c = self.parse_char()?;
                    let class = self.add_class(Class {
                        ranges: vec![(c, c)],
                        negated: false,
                    });
                    seq.push(Elem::Class(class));
                }
            }
        }
    }

    fn parse_class(&mut self) -> Result<Class, GrammarError> {
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => return self.error("unterminated character class"),
                Some(']') => {
                    self.pos += 1;
                    return Ok(Class { ranges, negated });
                }
                Some(_) => {
                    let lo = self.parse_char()?;
                    let mut hi = lo;
                    if self.peek() == Some('-') && !self.rest()[1..].starts_with(']') {
                        self.pos += 1;
                        hi = self.parse_char()?;
                        if hi < lo {
                            return self.error("character range out of order");
                        }
                    }
                    ranges.push((lo, hi));
                }
            }
        }
    }

    fn number(&mut self) -> Option<u32> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        self.pos += len;
        rest[..len].parse().ok()
    }

    /// `*`, `+`, `?` or `{m,n}` as `(min, max)`; `max = None` is unbounded.
    fn parse_repetition(&mut self) -> Result<(u32, Option<u32>), GrammarError> {
        let c = self.peek().unwrap_or(' ');
        self.pos += 1;
        let (min, max) = match c {
            '*' => (0, None),
            '+' => (1, None),
            '?' => (0, Some(1)),
            _ => {
                self.skip_space(false);
                let min = self.number();
                self.skip_space(false);
                let max = if self.peek() == Some(',') {
                    self.pos += 1;
                    self.skip_space(false);
                    self.number()
                } else {
                    Some(min.unwrap_or(0))
                };
                self.skip_space(false);
                if self.peek() != Some('}') {
                    return self.error("expected `}` closing a repetition");
                }
                self.pos += 1;
                (min.unwrap_or(0), max)
            }
        };
        if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
            return self.error(format!("repetition count over {MAX_REPEAT}"));
        }
        if max.is_some_and(|m| m < min) {
            return self.error("repetition maximum below its minimum");
        }
        Ok((min, max))
    }

    /// Appends `term` repeated `min..=max` times to `seq`, through generated
    /// rules as llama.cpp does: `min` copies, then `term*` or nested
    /// optionals `(term (term ...)?)?`.
    fn repeat(
        &mut self,
        rule: u32,
        seq: &mut Seq,
        term: Seq,
        min: u32,
        max: Option<u32>,
    ) -> Result<(), GrammarError> {
        if (seq.len() + term.len() * min as usize) > MAX_ELEMS {
            return Err(GrammarError::TooLarge);
        }
        for _ in 0..min {
            seq.extend_from_slice(&term);
        }
        match max {
            None => {
                // star ::= term star |
                let star = self.rule_id_generated(rule);
                let mut alt = term;
                alt.push(Elem::Rule(star));
                self.define(star, vec![alt, Seq::new()])?;
                seq.push(Elem::Rule(star));
            }
            Some(max) if max > min => {
                // opt_k ::= term opt_{k-1} | ; opt_1 ::= term |
                let mut inner: Option<u32> = None;
                for _ in min..max {
                    let opt = self.rule_id_generated(rule);
                    let mut alt = term.clone();
                    alt.extend(inner.map(Elem::Rule));
                    self.define(opt, vec![alt, Seq::new()])?;
                    inner = Some(opt);
                }
                seq.extend(inner.map(Elem::Rule));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A fresh generated rule id, defined by the caller.
    fn rule_id_generated(&mut self, parent: u32) -> u32 {
        let base = self.names[parent as usize].clone();
        let mut n = self.names.len();
        let mut name = format!("{base}_{n}");
        while self.ids.contains_key(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.rule_id(&name)
    }

    fn finish(self) -> Result<Grammar, GrammarError> {
        let Some(&root) = self.ids.get("root") else {
            return Err(GrammarError::NoRoot);
        };
        let mut elems = Vec::with_capacity(self.n_elems);
        let mut rules = Vec::with_capacity(self.bodies.len());
        for (id, body) in self.bodies.into_iter().enumerate() {
            let Some(alts) = body else {
                return Err(GrammarError::UndefinedRule(self.names[id].clone()));
            };
            let mut starts = Vec::with_capacity(alts.len());
            for alt in alts {
                starts.push(elems.len() as u32);
                elems.extend(alt);
                elems.push(Elem::End);
            }
            rules.push(starts);
        }
        let grammar = Grammar {
            elems,
            rules,
            classes: self.classes,
            names: self.names,
            root,
        };
        grammar.check_left_recursion()?;
        Ok(grammar)
    }
}

impl Grammar {
    /// Which rules can match the empty string (a fixed point).
    fn nullable(&self) -> Vec<bool> {
        let mut nullable = vec![false; self.rules.len()];
        loop {
            let mut changed = false;
            for (r, alts) in self.rules.iter().enumerate() {
                if nullable[r] {
                    continue;
                }
                let empty_alt = alts.iter().any(|&a| {
                    self.elems[a as usize..]
                        .iter()
                        .take_while(|e| **e != Elem::End)
                        .all(|e| matches!(e, Elem::Rule(s) if nullable[*s as usize]))
                });
                if empty_alt {
                    nullable[r] = true;
                    changed = true;
                }
            }
            if !changed {
                return nullable;
            }
        }
    }

    /// Fails if a rule reaches itself through leftmost references (skipping
    /// nullable ones).
    fn check_left_recursion(&self) -> Result<(), GrammarError> {
        let nullable = self.nullable();
        // left[r]: rules r can start with.
        let left: Vec<Vec<u32>> = self
            .rules
            .iter()
            .map(|alts| {
                let mut out = Vec::new();
                for &a in alts {
                    for e in self.elems[a as usize..].iter() {
                        match *e {
                            Elem::Rule(s) => {
                                out.push(s);
                                if !nullable[s as usize] {
                                    break;
                                }
                            }
                            Elem::Class(_) | Elem::End => break,
                        }
                    }
                }
                out
            })
            .collect();
        // Iterative DFS colouring: 0 new, 1 on the path, 2 done.
        let mut colour = vec![0u8; self.rules.len()];
        for start in 0..self.rules.len() {
            if colour[start] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (r, ref mut next)) = path.last_mut() {
                if let Some(&s) = left[r].get(*next) {
                    *next += 1;
                    match colour[s as usize] {
                        0 => {
                            colour[s as usize] = 1;
                            path.push((s as usize, 0));
                        }
                        1 => {
                            return Err(GrammarError::LeftRecursion(
                                self.names[s as usize].clone(),
                            ));
                        }
                        _ => {}
                    }
                } else {
                    colour[r] = 2;
                    path.pop();
                }
            }
        }
        Ok(())
    }
}
