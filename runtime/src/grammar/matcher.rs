//! The grammar's pushdown automaton, fed UTF-8 bytes token by token.
//!
//! The state is a set of stacks of positions in [`Grammar::elems`]; the top
//! of each is a character class the next character may match (a stack that
//! is empty means the text so far is a whole sentence). A character keeps
//! the stacks whose top matches it, each advanced past that class and
//! expanded through rule references until a class is on top again — the
//! algorithm of llama.cpp's `llama_grammar_accept`.
//!
//! Tokens may end inside a UTF-8 character: the bytes so far are carried to
//! the next token, and a token is allowed while some stack could still take
//! a character that starts with them.
//!
//! All buffers are kept and reused, so after the first few tokens checking
//! and accepting do not allocate.

use std::sync::Arc;

use super::gbnf::{Elem, Grammar};

/// Most stacks after one character. Grammars written for generation (JSON
/// Schemas, llama.cpp's samples) stay in the tens; a hostile ambiguous one
/// could otherwise grow them without bound.
const MAX_STACKS: usize = 512;
/// Most expansion steps for one character, and the deepest chain of rule
/// references followed without a character (a hostile grammar of a long
/// chain of rules would otherwise overflow the thread's stack).
const MAX_VISITS: usize = 1 << 16;
const MAX_DEPTH: usize = 512;

/// A set of stacks in one buffer, without duplicates.
#[derive(Clone, Debug, Default)]
struct StackSet {
    data: Vec<u32>,
    /// `(start, len)` of each stack in `data`.
    spans: Vec<(u32, u32)>,
    /// Expansion steps since the last clear.
    visits: usize,
    /// A limit above was hit: the set is incomplete.
    overflow: bool,
}

impl StackSet {
    fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
        self.visits = 0;
        self.overflow = false;
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, i: usize) -> &[u32] {
        let (start, len) = self.spans[i];
        &self.data[start as usize..(start + len) as usize]
    }

    fn insert(&mut self, stack: &[u32]) {
        if (0..self.len()).any(|i| self.get(i) == stack) {
            return;
        }
        if self.len() >= MAX_STACKS {
            self.overflow = true;
            return;
        }
        self.spans
            .push((self.data.len() as u32, stack.len() as u32));
        self.data.extend_from_slice(stack);
    }
}

/// UTF-8 bytes of a character not yet complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pending {
    bytes: [u8; 4],
    have: u8,
    need: u8,
}

enum Decoded {
    Char(u32),
    More,
    Invalid,
}

impl Pending {
    fn push(&mut self, b: u8) -> Decoded {
        if self.have == 0 {
            let need = match b {
                0x00..=0x7F => return Decoded::Char(u32::from(b)),
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Decoded::Invalid,
            };
            *self = Pending {
                bytes: [b, 0, 0, 0],
                have: 1,
                need,
            };
            return Decoded::More;
        }
        // The second byte's range excludes overlong forms and surrogates
        // (RFC 3629), so the bytes so far bound the code point tightly.
        let (lo, hi) = continuation_range(self.bytes[0], self.have);
        if !(lo..=hi).contains(&b) {
            return Decoded::Invalid;
        }
        self.bytes[self.have as usize] = b;
        self.have += 1;
        if self.have < self.need {
            return Decoded::More;
        }
        let c = decode(&self.bytes[..self.need as usize]);
        *self = Pending::default();
        Decoded::Char(c)
    }

    /// The code points a character starting with these bytes can be.
    fn range(&self) -> (u32, u32) {
        let mut lo = self.bytes;
        let mut hi = self.bytes;
        for i in self.have..self.need {
            let (l, h) = continuation_range(self.bytes[0], i);
            lo[i as usize] = l;
            hi[i as usize] = h;
        }
        let n = self.need as usize;
        (decode(&lo[..n]), decode(&hi[..n]))
    }
}

/// The valid values of continuation byte `i` (1-based) after `lead`.
fn continuation_range(lead: u8, i: u8) -> (u8, u8) {
    match (i, lead) {
        (1, 0xE0) => (0xA0, 0xBF),
        (1, 0xED) => (0x80, 0x9F),
        (1, 0xF0) => (0x90, 0xBF),
        (1, 0xF4) => (0x80, 0x8F),
        _ => (0x80, 0xBF),
    }
}

fn decode(b: &[u8]) -> u32 {
    let lead = match b.len() {
        2 => u32::from(b[0] & 0x1F),
        3 => u32::from(b[0] & 0x0F),
        _ => u32::from(b[0] & 0x07),
    };
    b[1..]
        .iter()
        .fold(lead, |c, &x| (c << 6) | u32::from(x & 0x3F))
}

/// Which buffer holds a set of stacks during a simulation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buf {
    Main,
    A,
    B,
}

/// Matches text against a [`Grammar`] as it is generated.
#[derive(Clone, Debug)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    stacks: StackSet,
    pending: Pending,
    a: StackSet,
    b: StackSet,
    work: Vec<u32>,
    /// A character needed more parse stacks than the limits allow.
    too_ambiguous: bool,
}

impl Matcher {
    /// A matcher at the start of the grammar's `root`.
    pub fn new(grammar: Arc<Grammar>) -> Matcher {
        let mut m = Matcher {
            grammar,
            stacks: StackSet::default(),
            pending: Pending::default(),
            a: StackSet::default(),
            b: StackSet::default(),
            work: Vec::new(),
            too_ambiguous: false,
        };
        m.reset();
        m
    }

    /// Back to the start of `root`.
    pub fn reset(&mut self) {
        self.stacks.clear();
        self.pending = Pending::default();
        let g = &*self.grammar;
        for &alt in &g.rules[g.root as usize] {
            self.work.clear();
            self.work.push(alt);
            expand(g, &mut self.work, &mut self.stacks, 0);
        }
        self.too_ambiguous = self.stacks.overflow;
    }

    /// Whether matching stopped because the grammar is too ambiguous (a
    /// character needed over 512 parse stacks, or a chain of over 512 rule
    /// references): the matcher then rejects everything.
    pub fn is_too_ambiguous(&self) -> bool {
        self.too_ambiguous
    }

    /// The grammar matched.
    pub fn grammar(&self) -> &Arc<Grammar> {
        &self.grammar
    }

    /// Whether the text so far is a whole sentence of the grammar.
    pub fn is_complete(&self) -> bool {
        self.pending.have == 0 && (0..self.stacks.len()).any(|i| self.stacks.get(i).is_empty())
    }

    /// Whether some character may still follow.
    pub fn can_continue(&self) -> bool {
        (0..self.stacks.len()).any(|i| !self.stacks.get(i).is_empty())
    }

    /// Whether the text so far can no longer become a sentence (after a
    /// rejected [`accept_bytes`](Self::accept_bytes)).
    pub fn is_dead(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Whether `bytes` may come next (it may end inside a character).
    /// Leaves the state as it was.
    pub fn allows_bytes(&mut self, bytes: &[u8]) -> bool {
        self.simulate(bytes).is_some()
    }

    /// Feeds `bytes`. Returns false, and leaves the matcher dead, if the
    /// grammar does not allow them.
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> bool {
        match self.simulate(bytes) {
            Some((buf, pending)) => {
                match buf {
                    Buf::Main => {}
                    Buf::A => std::mem::swap(&mut self.stacks, &mut self.a),
                    Buf::B => std::mem::swap(&mut self.stacks, &mut self.b),
                }
                self.pending = pending;
                true
            }
            None => {
                self.stacks.clear();
                false
            }
        }
    }

    /// [`accept_bytes`](Self::accept_bytes) for a string.
    pub fn accept_str(&mut self, s: &str) -> bool {
        self.accept_bytes(s.as_bytes())
    }

    /// Runs `bytes` from the current state through the scratch buffers;
    /// returns where the resulting stacks are and the carried bytes, or
    /// `None` if some character is rejected.
    fn simulate(&mut self, bytes: &[u8]) -> Option<(Buf, Pending)> {
        let g = &*self.grammar;
        let mut pending = self.pending;
        let mut cur = Buf::Main;
        for &byte in bytes {
            let c = match pending.push(byte) {
                Decoded::Char(c) => c,
                Decoded::More => continue,
                Decoded::Invalid => return None,
            };
            let (src, dst, next) = match cur {
                Buf::Main => (&self.stacks, &mut self.a, Buf::A),
                Buf::A => (&self.a, &mut self.b, Buf::B),
                Buf::B => (&self.b, &mut self.a, Buf::A),
            };
            step(g, src, c, dst, &mut self.work);
            if dst.overflow {
                self.too_ambiguous = true;
                return None;
            }
            if dst.is_empty() {
                return None;
            }
            cur = next;
        }
        if pending.have > 0 {
            let set = match cur {
                Buf::Main => &self.stacks,
                Buf::A => &self.a,
                Buf::B => &self.b,
            };
            let (lo, hi) = pending.range();
            let possible = (0..set.len()).any(|i| match set.get(i).last() {
                Some(&top) => match g.elems[top as usize] {
                    Elem::Class(k) => g.class(k).intersects(lo, hi),
                    _ => false,
                },
                None => false,
            });
            if !possible {
                return None;
            }
        }
        Some((cur, pending))
    }
}

/// The stacks of `src` whose top class matches `c`, advanced past it and
/// expanded, into `dst`.
fn step(g: &Grammar, src: &StackSet, c: u32, dst: &mut StackSet, work: &mut Vec<u32>) {
    dst.clear();
    for i in 0..src.len() {
        let stack = src.get(i);
        let Some((&top, below)) = stack.split_last() else {
            continue;
        };
        let Elem::Class(k) = g.elems[top as usize] else {
            continue;
        };
        if g.class(k).matches(c) {
            work.clear();
            work.extend_from_slice(below);
            work.push(top + 1);
            expand(g, work, dst, 0);
        }
    }
}

/// Expands the top of `stack` until a character class is on top (or the
/// stack is empty) and adds every resulting stack to `out`. `stack` is
/// left as it was.
fn expand(g: &Grammar, stack: &mut Vec<u32>, out: &mut StackSet, depth: usize) {
    out.visits += 1;
    if out.visits > MAX_VISITS || depth > MAX_DEPTH {
        out.overflow = true;
        return;
    }
    let Some(&top) = stack.last() else {
        out.insert(stack);
        return;
    };
    match g.elems[top as usize] {
        Elem::Class(_) => out.insert(stack),
        Elem::End => {
            stack.pop();
            expand(g, stack, out, depth + 1);
            stack.push(top);
        }
        Elem::Rule(r) => {
            stack.pop();
            // Where to go on after the rule: nothing to push at the end of
            // an alternative (so right recursion does not grow the stack).
            let next = top + 1;
            let push_next = g.elems[next as usize] != Elem::End;
            if push_next {
                stack.push(next);
            }
            for &alt in &g.rules[r as usize] {
                stack.push(alt);
                expand(g, stack, out, depth + 1);
                stack.pop();
            }
            if push_next {
                stack.pop();
            }
            stack.push(top);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::GrammarError;

    fn matcher(src: &str) -> Matcher {
        Matcher::new(Arc::new(Grammar::parse(src).unwrap()))
    }

    fn accepts(src: &str, text: &str) -> bool {
        let mut m = matcher(src);
        m.accept_str(text) && m.is_complete()
    }

    #[test]
    fn literals_classes_and_repetitions() {
        let g = r#"root ::= "a" [0-9]+ ("x" | "yz")? [^\n]{2,3}"#;
        for ok in ["a1..", "a123x..", "a9yz...", "a0x\t\t"] {
            assert!(accepts(g, ok), "{ok}");
        }
        for bad in ["a..", "ax..", "a1.", "a1x....", "a1x.\n.", "b1.."] {
            assert!(!accepts(g, bad), "{bad}");
        }
    }

    #[test]
    fn prefixes_are_alive_but_not_complete() {
        let mut m = matcher(r#"root ::= "{" [a-z]* "}""#);
        assert!(m.accept_str("{ab"));
        assert!(!m.is_complete());
        assert!(m.can_continue());
        assert!(m.allows_bytes(b"c}"));
        assert!(!m.allows_bytes(b"C"));
        assert!(m.accept_str("}"));
        assert!(m.is_complete());
        assert!(!m.can_continue());
        assert!(!m.accept_str("x"));
        assert!(m.is_dead());
    }

    #[test]
    fn recursion_and_multi_line_rules() {
        let g = "root ::= list\nlist ::= \"[\" ( item ( \",\" item )* )? \"]\"\n\
                 item ::= list\n       | [0-9]+  # numbers\n";
        for ok in ["[]", "[1]", "[1,[2,[]],33]", "[[[[[]]]]]"] {
            assert!(accepts(g, ok), "{ok}");
        }
        for bad in ["[", "[1,]", "[[]", "1"] {
            assert!(!accepts(g, bad), "{bad}");
        }
    }

    #[test]
    fn utf8_split_across_tokens() {
        let mut m = matcher("root ::= [α-ω]+");
        let beta = "β".as_bytes();
        assert!(m.allows_bytes(&beta[..1]));
        assert!(m.accept_bytes(&beta[..1]));
        assert!(!m.is_complete());
        assert!(m.accept_bytes(&beta[1..]));
        assert!(m.is_complete());
        // "é" is U+00E9: its lead byte 0xC3 cannot start a Greek letter.
        assert!(!m.allows_bytes(&"é".as_bytes()[..1]));
        assert!(!m.allows_bytes(&[0xFF]));
        assert!(!m.allows_bytes(&[0x80]));
        // Overlong forms never pass for ASCII: E0 80 80 is not "\0".
        let mut ascii = matcher("root ::= [a-z]+");
        assert!(!ascii.allows_bytes(&[0xE0]));
        assert!(!ascii.allows_bytes(&[0xC1, 0xB9]));
        assert!(!ascii.allows_bytes(&[0xE0, 0x81, 0xB9]));
    }

    #[test]
    fn hostile_grammars_stop_instead_of_exploding() {
        // Every split of a run of "a"s into pieces of one to three is a
        // parse: the stacks would grow with the text.
        let mut m = matcher("root ::= x*\nx ::= (\"a\" | \"aa\" | \"aaa\") (\"b\"? \"a\"?){0,200}");
        let mut text = 0;
        while text < 2000 && m.accept_str("a") {
            text += 1;
        }
        assert!(m.is_too_ambiguous(), "{text} characters taken");
        assert!(text < 2000);
        // A chain of 2000 rule references: no stack overflow.
        let mut chain: String = (0..2000)
            .map(|i| format!("r{i} ::= r{}\n", i + 1))
            .collect();
        chain.push_str("r2000 ::= \"z\"\nroot ::= r0\n");
        let m = matcher(&chain);
        assert!(m.is_too_ambiguous());
        assert!(!Matcher::new(m.grammar().clone()).clone().accept_str("z"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |s: &str| Grammar::parse(s).unwrap_err();
        assert_eq!(e("a ::= \"x\""), GrammarError::NoRoot);
        assert_eq!(e("root ::= foo"), GrammarError::UndefinedRule("foo".into()));
        assert_eq!(
            e("root ::= \"a\"\nroot ::= \"b\""),
            GrammarError::DuplicateRule("root".into())
        );
        assert_eq!(
            e("root ::= x \"a\"\nx ::= \"\" root | \"b\""),
            GrammarError::LeftRecursion("root".into())
        );
        assert!(matches!(e("root ::= \"abc"), GrammarError::Syntax { .. }));
        assert!(matches!(e("root ::= [a-"), GrammarError::Syntax { .. }));
        assert!(matches!(e("root ::= (\"a\""), GrammarError::Syntax { .. }));
        assert!(matches!(
            e("root ::= \"a\"{3,1}"),
            GrammarError::Syntax { .. }
        ));
        assert!(matches!(
            e("root ::= \"a\"{99999}"),
            GrammarError::Syntax { .. }
        ));
        assert!(matches!(e("root ::= \"\\q\""), GrammarError::Syntax { .. }));
        assert!(matches!(e("root ::= *"), GrammarError::Syntax { .. }));
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(matches!(e(&deep), GrammarError::Syntax { .. }));
        let Err(GrammarError::Syntax { line, column, .. }) =
            Grammar::parse("root ::= \"a\"\n  x ::= @")
        else {
            panic!("expected a syntax error");
        };
        assert_eq!((line, column), (2, 9));
    }
}
