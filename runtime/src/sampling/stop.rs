//! Stop strings over streamed text.
//!
//! Generated text arrives in pieces (one per token, as the streaming
//! detokenizer releases it) and a stop string may straddle pieces. A
//! [`StopStrings`] holds back the shortest tail that could still grow into a
//! stop string, releases it as soon as it cannot, and reports the stop once one
//! has fully appeared; the text from the stop string on is never released.
//!
//! End-of-generation *tokens* (`<|eot_id|>`, `<|eom_id|>`, `<|im_end|>`, EOS)
//! are the caller's business: they are ids, checked before detokenizing.

use std::fmt;

/// A stop string was empty: it would match before any text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmptyStopString;

impl fmt::Display for EmptyStopString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stop string is empty")
    }
}

impl std::error::Error for EmptyStopString {}

/// Bytes reserved beyond the longest stop string for an incoming piece.
const PIECE_ROOM: usize = 64;

/// What one [`StopStrings::push`] releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopStep<'a> {
    /// Text that is safe to show now (it can no longer be part of a stop
    /// string). When `stopped`, this is the text before the stop string.
    pub text: &'a str,
    /// A stop string has fully appeared: end the generation.
    pub stopped: bool,
}

/// Detects stop strings across streamed pieces. See the module docs.
///
/// ```
/// use spinel_runtime::sampling::StopStrings;
///
/// let mut s = StopStrings::new(["</s>"]).unwrap();
/// assert_eq!(s.push("Hello <").text, "Hello ");
/// let step = s.push("/s> more");
/// assert!(step.stopped);
/// assert_eq!(step.text, "");
/// ```
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Longest stop string, in bytes.
    max_len: usize,
    /// Text received and not yet released (a possible stop-string start).
    held: String,
    /// The text the last call released.
    out: String,
    /// Index of the stop string that ended generation.
    stopped: Option<usize>,
}

impl StopStrings {
    /// A detector for `stops`. Duplicates are harmless; an empty string is an
    /// error.
    pub fn new<I, S>(stops: I) -> Result<Self, EmptyStopString>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops: Vec<String> = stops.into_iter().map(Into::into).collect();
        if stops.iter().any(String::is_empty) {
            return Err(EmptyStopString);
        }
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        // Room for a held-back tail plus a token-sized piece, so a stream of
        // ordinary pieces never reallocates.
        let room = max_len + PIECE_ROOM;
        Ok(StopStrings {
            stops,
            max_len,
            held: String::with_capacity(room),
            out: String::with_capacity(room),
            stopped: None,
        })
    }

    /// The stop strings.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Feeds the next piece of generated text. After a stop every call
    /// releases nothing and reports `stopped`.
    pub fn push(&mut self, piece: &str) -> StopStep<'_> {
        self.out.clear();
        if self.stopped.is_some() {
            return StopStep {
                text: &self.out,
                stopped: true,
            };
        }
        self.held.push_str(piece);

        // The earliest complete stop string wins. Everything before `held`
        // was released because no stop string could start there, so a match
        // lies entirely inside `held`.
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = first {
            self.out.push_str(&self.held[..at]);
            self.held.clear();
            self.stopped = Some(i);
            return StopStep {
                text: &self.out,
                stopped: true,
            };
        }

        // Keep the longest tail that is a proper prefix of a stop string.
        let keep = self.partial_tail();
        let release = self.held.len() - keep;
        self.out.push_str(&self.held[..release]);
        self.held.drain(..release);
        StopStep {
            text: &self.out,
            stopped: false,
        }
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some
    /// stop string (0 if none).
    fn partial_tail(&self) -> usize {
        let h = self.held.as_bytes();
        let longest = h.len().min(self.max_len.saturating_sub(1));
        (1..=longest)
            .rev()
            .find(|&k| {
                let start = h.len() - k;
                self.held.is_char_boundary(start)
                    && self
                        .stops
                        .iter()
                        .any(|s| s.len() > k && s.as_bytes().starts_with(&h[start..]))
            })
            .unwrap_or(0)
    }

    /// Ends the stream without a stop string (EOS, max tokens): releases the
    /// text held back. Returns nothing after a stop.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        std::mem::swap(&mut self.out, &mut self.held);
        &self.out
    }

    /// The text currently held back.
    pub fn held(&self) -> &str {
        &self.held
    }

    /// The stop string that ended generation, if one did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.map(|i| self.stops[i].as_str())
    }

    /// Starts over for a new generation, keeping the stop strings.
    pub fn reset(&mut self) {
        self.held.clear();
        self.out.clear();
        self.stopped = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::Xoshiro256;

    /// Feeds `pieces`, returns (released text, stopped, stop string). Also
    /// checks the invariants after each push: released + held is exactly the
    /// input so far (before a stop), and what is held could still start a
    /// stop string.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Option<String>) {
        let mut s = StopStrings::new(stops.iter().copied()).unwrap();
        let mut released = String::new();
        let mut fed = String::new();
        let mut stopped = false;
        for p in pieces {
            fed.push_str(p);
            let step = s.push(p);
            released.push_str(step.text);
            if step.stopped {
                stopped = true;
                continue;
            }
            assert_eq!(format!("{released}{}", s.held()), fed);
            let held = s.held();
            assert!(
                held.is_empty()
                    || stops
                        .iter()
                        .any(|t| t.len() > held.len() && t.starts_with(held)),
                "holding {held:?} for {stops:?}"
            );
        }
        if !stopped {
            released.push_str(s.finish());
            assert_eq!(released, fed);
        } else {
            assert_eq!(s.finish(), "");
        }
        (released, stopped, s.stopped().map(str::to_owned))
    }

    /// The text up to the earliest occurrence of any stop string.
    fn reference(stops: &[&str], text: &str) -> (String, bool) {
        match stops.iter().filter_map(|s| text.find(s)).min() {
            Some(at) => (text[..at].to_owned(), true),
            None => (text.to_owned(), false),
        }
    }

    fn boundaries(text: &str) -> Vec<usize> {
        (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect()
    }

    /// Every split into two and three pieces, and one piece per char.
    fn check_all_splits(stops: &[&str], text: &str) {
        let want = reference(stops, text);
        let b = boundaries(text);
        for &i in &b {
            let got = run(stops, &[&text[..i], &text[i..]]);
            assert_eq!((got.0, got.1), want, "split at {i} of {text:?}");
            for &j in b.iter().filter(|&&j| j >= i) {
                let got = run(stops, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!((got.0, got.1), want, "split at {i}, {j} of {text:?}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let got = run(stops, &pieces);
        assert_eq!((got.0, got.1), want, "char by char: {text:?}");
    }

    #[test]
    fn stop_string_across_every_split() {
        check_all_splits(&["</s>"], "Hello</s>world");
        check_all_splits(&["</s>", "STOP"], "one STOP two </s>");
        check_all_splits(&["<|im_end|>"], "The answer is 4.<|im_end|>\n");
        check_all_splits(&["\n\nUser:"], "A\n\nB\n\nUser: hi");
        // Stop string at the very start and at the very end.
        check_all_splits(&["ab"], "abcd");
        check_all_splits(&["cd"], "abcd");
    }

    #[test]
    fn no_stop_releases_everything() {
        check_all_splits(&["</s>"], "a < b and c </ d </s");
        check_all_splits(&[], "nothing to stop");
        let (text, stopped, which) = run(&["xyz"], &["x", "y", "!"]);
        assert_eq!((text.as_str(), stopped, which), ("xy!", false, None));
    }

    #[test]
    fn overlapping_prefixes() {
        // The held tail must be the longest candidate: "aa" of "aaab".
        check_all_splits(&["aab"], "aaab");
        check_all_splits(&["abab"], "abaabababx");
        check_all_splits(&["abc", "bcd", "cdx"], "zabcdx");
    }

    #[test]
    fn earliest_complete_stop_wins() {
        // "bc" completes while "abcd" is still only a prefix: stop at "bc".
        let (text, stopped, which) = run(&["abcd", "bc"], &["a", "b", "c", "d"]);
        assert_eq!((text.as_str(), stopped), ("a", true));
        assert_eq!(which.as_deref(), Some("bc"));
        // In one piece, the earlier start wins over list order.
        let (text, _, which) = run(&["cd", "ab"], &["xxabcd"]);
        assert_eq!(text, "xx");
        assert_eq!(which.as_deref(), Some("ab"));
    }

    #[test]
    fn held_text_is_released_as_soon_as_it_cannot_stop() {
        let mut s = StopStrings::new(["<end>"]).unwrap();
        assert_eq!(s.push("a<e").text, "a");
        assert_eq!(s.held(), "<e");
        assert_eq!(s.push("x").text, "<ex");
        assert_eq!(s.held(), "");
        assert_eq!(s.push("<en").text, "");
        assert_eq!(s.finish(), "<en");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn after_a_stop_nothing_more() {
        let mut s = StopStrings::new(["###"]).unwrap();
        let step = s.push("done### trailing");
        assert_eq!((step.text, step.stopped), ("done", true));
        assert_eq!(s.stopped(), Some("###"));
        let step = s.push("more");
        assert_eq!((step.text, step.stopped), ("", true));
        s.reset();
        assert_eq!(s.stopped(), None);
        assert_eq!(s.push("again").text, "again");
    }

    #[test]
    fn unicode_stop_strings() {
        check_all_splits(&["é!"], "café! après");
        check_all_splits(&["🛑"], "go go 🛑 stop");
        // A stop string sharing a lead byte with the text: 'é' (C3 A9) and
        // 'ê' (C3 AA).
        check_all_splits(&["ê"], "ééêé");
    }

    #[test]
    fn empty_stop_string_is_an_error() {
        assert_eq!(StopStrings::new(["ok", ""]).unwrap_err(), EmptyStopString);
    }

    #[test]
    fn random_texts_match_the_reference() {
        let mut rng = Xoshiro256::new(2024);
        let alphabet = ['a', 'b', '<', '/', 'é'];
        let pick = |rng: &mut Xoshiro256, n: usize| -> String {
            (0..n)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect()
        };
        for _ in 0..2000 {
            let nstops = 1 + (rng.next_u64() % 3) as usize;
            let stops: Vec<String> = (0..nstops)
                .map(|_| {
                    let n = 1 + (rng.next_u64() % 4) as usize;
                    pick(&mut rng, n)
                })
                .collect();
            let n = (rng.next_u64() % 24) as usize;
            let text = pick(&mut rng, n);
            // Random split points on char boundaries.
            let b = boundaries(&text);
            let mut cuts: Vec<usize> = (0..(rng.next_u64() % 6))
                .map(|_| b[(rng.next_u64() % b.len() as u64) as usize])
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                pieces.push(&text[last..c]);
                last = c;
            }
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let got = run(&stop_refs, &pieces);
            assert_eq!(
                (got.0, got.1),
                reference(&stop_refs, &text),
                "stops {stops:?}, pieces {pieces:?}"
            );
        }
    }
}
