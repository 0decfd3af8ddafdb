//! Pre-tokenizer splits for byte-level BPE, hand-written.
//!
//! Each byte-level BPE vocabulary is trained on text cut into "words" by a
//! regex; merges never cross a word boundary. The regexes use look-ahead
//! (`\s+(?!\S)`), which the `regex` crate does not have, so — like
//! llama.cpp's `unicode_regex_split_custom_*` — each is written out here as
//! a scanner over code points with the regex's exact semantics: alternatives
//! tried in order at each position, greedy quantifiers, backtracking where an
//! alternative needs it. Names follow `tokenizer.ggml.pre`:
//!
//! * [`PreTokenizer::Gpt2`] (`gpt-2`, …):
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! * [`PreTokenizer::Llama3`] (`llama3`, `llama-bpe`, …):
//!   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! * [`PreTokenizer::Smollm`] (`smollm`, `starcoder`, …): every `\p{N}` alone
//!   (HF `Digits(individual_digits=true)`), then the GPT-2 regex on the rest.
//! * [`PreTokenizer::Llama4`] (`llama4`, `gpt-4o`, …), the tokenizer.json regex
//!   `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
//!   llama.cpp runs an ASCII-only approximation of it through `std::regex`
//!   (every non-ASCII letter in both case classes, marks in neither); this
//!   follows the real regex, as HF `tokenizers` does, so the two differ on
//!   mixed-case non-ASCII words and combining marks.
//! * [`PreTokenizer::Default`] (`default`, or no `pre` key): llama.cpp's
//!   fallback, four regexes applied one after the other, each splitting the
//!   pieces of the previous one: `[\p{P}\$\+<=>\^~\|]+`, the GPT-2 regex,
//!   `\p{N}+`, `[0-9][0-9][0-9]`.
//!
//! Case-insensitive contractions compare ASCII letters only (as llama.cpp).

use super::unicode::{CR_OR_LF, LETTER, LOWERISH, NUMBER, PUNCT, UPPERISH, WHITESPACE, char_flags};

/// How byte-level BPE text is cut into words before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreTokenizer {
    /// llama.cpp's fallback for `default` or a missing `tokenizer.ggml.pre`.
    Default,
    /// GPT-2's regex.
    Gpt2,
    /// Llama 3's (tiktoken cl100k-style) regex.
    Llama3,
    /// SmolLM / StarCoder: single digits, then GPT-2's regex.
    Smollm,
    /// Llama 4's (GPT-4o o200k-style) regex.
    Llama4,
}

impl PreTokenizer {
    /// Every `tokenizer.ggml.pre` value llama.cpp accepts whose split is one
    /// of these, with that split (llama.cpp's `llama_vocab::impl::load`:
    /// names it maps to one pre-tokenizer type, and types that share one
    /// regex, such as `dbrx` and `smaug-bpe` with Llama 3's).
    pub const GGUF_NAMES: &'static [(&'static str, PreTokenizer)] = &[
        ("default", PreTokenizer::Default),
        ("llama3", PreTokenizer::Llama3),
        ("llama-v3", PreTokenizer::Llama3),
        ("llama-bpe", PreTokenizer::Llama3),
        ("falcon3", PreTokenizer::Llama3),
        ("falcon-h1", PreTokenizer::Llama3),
        ("pixtral", PreTokenizer::Llama3),
        ("midm-2.0", PreTokenizer::Llama3),
        ("lfm2", PreTokenizer::Llama3),
        ("jina-v5-nano", PreTokenizer::Llama3),
        ("dbrx", PreTokenizer::Llama3),
        ("smaug-bpe", PreTokenizer::Llama3),
        ("smollm", PreTokenizer::Smollm),
        ("starcoder", PreTokenizer::Smollm),
        ("refact", PreTokenizer::Smollm),
        ("command-r", PreTokenizer::Smollm),
        ("codeshell", PreTokenizer::Smollm),
        ("exaone", PreTokenizer::Smollm),
        ("minerva-7b", PreTokenizer::Smollm),
        ("gpt-2", PreTokenizer::Gpt2),
        ("phi-2", PreTokenizer::Gpt2),
        ("mpt", PreTokenizer::Gpt2),
        ("olmo", PreTokenizer::Gpt2),
        ("jais", PreTokenizer::Gpt2),
        ("trillion", PreTokenizer::Gpt2),
        ("exaone4", PreTokenizer::Gpt2),
        ("mellum", PreTokenizer::Gpt2),
        ("llama4", PreTokenizer::Llama4),
        ("gpt-4o", PreTokenizer::Llama4),
        ("kanana2", PreTokenizer::Llama4),
        ("talkie", PreTokenizer::Llama4),
    ];

    /// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, if
    /// it is one of those implemented here ([`Self::GGUF_NAMES`]).
    pub fn from_gguf_name(name: &str) -> Option<PreTokenizer> {
        Self::GGUF_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, p)| p)
    }

    /// The canonical `tokenizer.ggml.pre` name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            PreTokenizer::Default => "default",
            PreTokenizer::Gpt2 => "gpt-2",
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::Llama4 => "llama4",
        }
    }
}

/// Reusable buffers for splitting.
#[derive(Default)]
pub(crate) struct Splitter {
    chars: Vec<char>,
    flags: Vec<u8>,
    /// Byte offset of each char, and the text length at the end.
    offsets: Vec<usize>,
    ends: Vec<usize>,
    tmp: Vec<usize>,
}

/// The code points of one piece: `[ini, end)` of the whole text's arrays.
struct Cpts<'a> {
    c: &'a [char],
    f: &'a [u8],
    end: usize,
}

impl Cpts<'_> {
    #[inline]
    fn flags(&self, i: usize) -> u8 {
        if i < self.end { self.f[i] } else { 0 }
    }
    #[inline]
    fn has(&self, i: usize, mask: u8) -> bool {
        i < self.end && self.f[i] & mask != 0
    }
    #[inline]
    fn ch(&self, i: usize) -> Option<char> {
        if i < self.end { Some(self.c[i]) } else { None }
    }
    /// `[^\s\p{L}\p{N}]`
    #[inline]
    fn is_other(&self, i: usize) -> bool {
        i < self.end && self.f[i] & (WHITESPACE | LETTER | NUMBER) == 0
    }
    /// `[^\r\n\p{L}\p{N}]`
    #[inline]
    fn is_prefix(&self, i: usize) -> bool {
        i < self.end && self.f[i] & (CR_OR_LF | LETTER | NUMBER) == 0
    }
    #[inline]
    fn run(&self, mut i: usize, mask: u8) -> usize {
        while self.has(i, mask) {
            i += 1;
        }
        i
    }
    #[inline]
    fn run_other(&self, mut i: usize) -> usize {
        while self.is_other(i) {
            i += 1;
        }
        i
    }

    /// The end of a contraction `'s|'t|'re|'ve|'m|'ll|'d` at `i`
    /// (ASCII-case-insensitive if `fold`).
    fn contraction(&self, i: usize, fold: bool) -> Option<usize> {
        if self.ch(i) != Some('\'') {
            return None;
        }
        let low = |c: Option<char>| c.map(|c| if fold { c.to_ascii_lowercase() } else { c });
        let a = low(self.ch(i + 1))?;
        if matches!(a, 's' | 't' | 'm' | 'd') {
            return Some(i + 2);
        }
        let b = low(self.ch(i + 2))?;
        match (a, b) {
            ('r', 'e') | ('v', 'e') | ('l', 'l') => Some(i + 3),
            _ => None,
        }
    }

    /// `\s*[\r\n]+|\s+(?!\S)|\s+` at `pos` (`with_newlines`: include the
    /// first alternative). `None` if `pos` is not whitespace.
    fn whitespace(&self, pos: usize, with_newlines: bool) -> Option<usize> {
        let mut n = pos;
        let mut last_nl = None;
        while self.has(n, WHITESPACE) {
            if self.f[n] & CR_OR_LF != 0 {
                last_nl = Some(n + 1);
            }
            n += 1;
        }
        if n == pos {
            return None;
        }
        if with_newlines {
            if let Some(e) = last_nl {
                return Some(e);
            }
        }
        // `\s+(?!\S)`: give the last whitespace to a following non-space.
        if n - pos > 1 && n < self.end {
            return Some(n - 1);
        }
        Some(n)
    }
}

fn split_gpt2(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    let mut pos = ini;
    while pos < cp.end {
        let end = gpt2_token(cp, pos);
        out.push(end);
        pos = end;
    }
}

fn gpt2_token(cp: &Cpts<'_>, pos: usize) -> usize {
    if let Some(e) = cp.contraction(pos, false) {
        return e;
    }
    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`
    let s = if cp.c[pos] == ' ' { pos + 1 } else { pos };
    if cp.has(s, LETTER) {
        return cp.run(s, LETTER);
    }
    if cp.has(s, NUMBER) {
        return cp.run(s, NUMBER);
    }
    if cp.is_other(s) {
        return cp.run_other(s);
    }
    cp.whitespace(pos, false).unwrap_or(pos + 1)
}

fn split_llama3(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    let mut pos = ini;
    while pos < cp.end {
        let end = llama3_token(cp, pos);
        out.push(end);
        pos = end;
    }
}

fn llama3_token(cp: &Cpts<'_>, pos: usize) -> usize {
    if let Some(e) = cp.contraction(pos, true) {
        return e;
    }
    let f = cp.flags(pos);
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if f & LETTER != 0 {
        return cp.run(pos, LETTER);
    }
    if cp.is_prefix(pos) && cp.has(pos + 1, LETTER) {
        return cp.run(pos + 1, LETTER);
    }
    // `\p{N}{1,3}`
    if f & NUMBER != 0 {
        let mut e = pos;
        while e < pos + 3 && cp.has(e, NUMBER) {
            e += 1;
        }
        return e;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let s = if cp.c[pos] == ' ' && cp.is_other(pos + 1) {
        pos + 1
    } else {
        pos
    };
    if cp.is_other(s) {
        let e = cp.run_other(s);
        return cp.run(e, CR_OR_LF);
    }
    cp.whitespace(pos, true).unwrap_or(pos + 1)
}

fn split_llama4(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    let mut pos = ini;
    while pos < cp.end {
        let end = llama4_token(cp, pos);
        out.push(end);
        pos = end;
    }
}

/// `U*W+` from `s` (U = UPPERISH, W = LOWERISH), with backtracking: the
/// longest U-run prefix after which a W follows.
fn upper_star_lower_plus(cp: &Cpts<'_>, s: usize) -> Option<usize> {
    let u_end = cp.run(s, UPPERISH);
    let mut k = u_end;
    loop {
        if cp.has(k, LOWERISH) {
            return Some(cp.run(k, LOWERISH));
        }
        if k == s {
            return None;
        }
        k -= 1;
    }
}

/// `U+W*` from `s`.
fn upper_plus_lower_star(cp: &Cpts<'_>, s: usize) -> Option<usize> {
    let u_end = cp.run(s, UPPERISH);
    if u_end == s {
        return None;
    }
    Some(cp.run(u_end, LOWERISH))
}

fn llama4_token(cp: &Cpts<'_>, pos: usize) -> usize {
    let with_prefix = cp.is_prefix(pos);
    let contraction = |e: usize| cp.contraction(e, true).unwrap_or(e);
    // `P?U*W+C?` (with P, then without), then `P?U+W*C?`.
    for alt in [upper_star_lower_plus, upper_plus_lower_star] {
        if with_prefix {
            if let Some(e) = alt(cp, pos + 1) {
                return contraction(e);
            }
        }
        if let Some(e) = alt(cp, pos) {
            return contraction(e);
        }
    }
    // `\p{N}{1,3}`
    if cp.has(pos, NUMBER) {
        let mut e = pos;
        while e < pos + 3 && cp.has(e, NUMBER) {
            e += 1;
        }
        return e;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    let s = if cp.c[pos] == ' ' && cp.is_other(pos + 1) {
        pos + 1
    } else {
        pos
    };
    if cp.is_other(s) {
        let mut e = cp.run_other(s);
        while matches!(cp.ch(e), Some('\r' | '\n' | '/')) {
            e += 1;
        }
        return e;
    }
    cp.whitespace(pos, true).unwrap_or(pos + 1)
}

/// Isolates every char for which `is_match` holds, or (`runs`) every maximal
/// run of such chars; the text between becomes pieces too.
fn split_isolated(
    cp: &Cpts<'_>,
    ini: usize,
    out: &mut Vec<usize>,
    runs: bool,
    is_match: impl Fn(usize) -> bool,
) {
    let mut pos = ini;
    while pos < cp.end {
        let mut e = pos + 1;
        if is_match(pos) {
            if runs {
                while e < cp.end && is_match(e) {
                    e += 1;
                }
            }
        } else {
            while e < cp.end && !is_match(e) {
                e += 1;
            }
        }
        out.push(e);
        pos = e;
    }
}

/// `[0-9][0-9][0-9]` as a splitting regex: groups of three ASCII digits from
/// the left of each digit run; everything else stays as it is.
fn split_three_digits(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    let digit = |i: usize| cp.ch(i).is_some_and(|c| c.is_ascii_digit());
    let mut pos = ini;
    let mut gap_start = ini;
    while pos < cp.end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            if gap_start < pos {
                out.push(pos);
            }
            pos += 3;
            out.push(pos);
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if gap_start < cp.end {
        out.push(cp.end);
    }
}

impl Splitter {
    /// Splits `text` into words; `out` receives their byte ranges in order,
    /// covering the whole text.
    pub(crate) fn split(&mut self, pre: PreTokenizer, text: &str, out: &mut Vec<(usize, usize)>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        self.chars.clear();
        self.flags.clear();
        self.offsets.clear();
        for (i, c) in text.char_indices() {
            self.chars.push(c);
            self.flags.push(char_flags(c));
            self.offsets.push(i);
        }
        self.offsets.push(text.len());
        let n = self.chars.len();

        // Char-index ends of the pieces.
        self.ends.clear();
        self.ends.push(n);
        type Stage = fn(&Cpts<'_>, usize, &mut Vec<usize>);
        let stages: &[Stage] = match pre {
            PreTokenizer::Gpt2 => &[split_gpt2],
            PreTokenizer::Llama3 => &[split_llama3],
            PreTokenizer::Llama4 => &[split_llama4],
            PreTokenizer::Smollm => &[split_digits_individually, split_gpt2],
            PreTokenizer::Default => &[
                split_punct_runs,
                split_gpt2,
                split_number_runs,
                split_three_digits,
            ],
        };
        for stage in stages {
            self.tmp.clear();
            let mut ini = 0;
            for &end in &self.ends {
                let cp = Cpts {
                    c: &self.chars,
                    f: &self.flags,
                    end,
                };
                stage(&cp, ini, &mut self.tmp);
                ini = end;
            }
            std::mem::swap(&mut self.ends, &mut self.tmp);
        }

        let mut ini = 0;
        for &end in &self.ends {
            out.push((self.offsets[ini], self.offsets[end]));
            ini = end;
        }
    }
}

fn split_digits_individually(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    split_isolated(cp, ini, out, false, |i| cp.has(i, NUMBER));
}

fn split_number_runs(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    split_isolated(cp, ini, out, true, |i| cp.has(i, NUMBER));
}

/// `[\p{P}\$\+<=>\^~\|]+`
fn split_punct_runs(cp: &Cpts<'_>, ini: usize, out: &mut Vec<usize>) {
    split_isolated(cp, ini, out, true, |i| {
        cp.has(i, PUNCT) || matches!(cp.c[i], '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        s.split(pre, text, &mut out);
        let mut prev = 0;
        for &(a, b) in &out {
            assert_eq!(a, prev, "pieces must tile the text");
            assert!(b > a, "no empty pieces");
            prev = b;
        }
        assert_eq!(prev, text.len());
        out.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    #[test]
    fn llama3_regex() {
        use PreTokenizer::Llama3 as L;
        assert_eq!(words(L, "Hello world"), ["Hello", " world"]);
        assert_eq!(
            words(L, "I'M SURE THEY'RE"),
            ["I", "'M", " SURE", " THEY", "'RE"]
        );
        assert_eq!(words(L, "y'all"), ["y", "'all"]);
        assert_eq!(words(L, "1234567"), ["123", "456", "7"]);
        assert_eq!(words(L, "  grabbed"), [" ", " grabbed"]);
        assert_eq!(words(L, "a  \n\n b"), ["a", "  \n\n", " b"]);
        assert_eq!(words(L, "x   "), ["x", "   "]);
        assert_eq!(words(L, "\ttabs"), ["\ttabs"]);
        assert_eq!(words(L, " (x)"), [" (", "x", ")"]);
        assert_eq!(words(L, "((x"), ["((", "x"]);
        assert_eq!(words(L, "ok!!\n\nnext"), ["ok", "!!\n\n", "next"]);
        assert_eq!(words(L, " 12"), [" ", "12"]);
        assert_eq!(words(L, "\u{a0}non"), ["\u{a0}non"]);
        assert_eq!(words(L, "a\r\n"), ["a", "\r\n"]);
    }

    #[test]
    fn gpt2_and_smollm() {
        use PreTokenizer::{Gpt2, Smollm};
        assert_eq!(words(Gpt2, "I'M don't"), ["I", "'", "M", " don", "'t"]);
        assert_eq!(words(Gpt2, "abc 123 !!"), ["abc", " 123", " !!"]);
        assert_eq!(words(Gpt2, "a   b"), ["a", "  ", " b"]);
        assert_eq!(words(Smollm, "abc 123"), ["abc", " ", "1", "2", "3"]);
        assert_eq!(words(Smollm, "a  1"), ["a", "  ", "1"]);
        assert_eq!(words(Smollm, "x٣y"), ["x", "٣", "y"]);
    }

    #[test]
    fn llama4_regex() {
        use PreTokenizer::Llama4 as L;
        assert_eq!(words(L, "Hello World"), ["Hello", " World"]);
        assert_eq!(words(L, "HTTPServer"), ["HTTPServer"]);
        assert_eq!(words(L, "camelCase"), ["camel", "Case"]);
        assert_eq!(words(L, "THEY'RE here's"), ["THEY'RE", " here's"]);
        assert_eq!(words(L, "1234"), ["123", "4"]);
        assert_eq!(words(L, "a/b//\n"), ["a", "/b", "//\n"]);
        // Combining marks belong to both case classes.
        assert_eq!(words(L, "e\u{301}te\u{301}"), ["e\u{301}te\u{301}"]);
        assert_eq!(words(L, "aÉ"), ["a", "É"]);
    }

    #[test]
    fn default_pipeline() {
        use PreTokenizer::Default as D;
        assert_eq!(words(D, "a+b=12345"), ["a", "+", "b", "=", "123", "45"]);
        assert_eq!(words(D, "hello, world"), ["hello", ",", " world"]);
    }
}
