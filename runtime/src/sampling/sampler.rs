//! The token sampler: llama.cpp's default chain with its semantics.
//!
//! Order, as in llama.cpp's `common_sampler` default chain:
//!
//! 1. **penalties** over the last `penalty_last_n` accepted tokens
//!    (`llama_sampler_penalties`): for each token seen `count > 0` times, a
//!    positive logit is divided by `repeat_penalty` and a non-positive one
//!    multiplied by it, then `count·frequency_penalty + presence_penalty` is
//!    subtracted;
//! 2. **top-k**: keep the `k` highest logits (`0` = off);
//! 3. **top-p** (nucleus): softmax over what is left, keep the shortest
//!    prefix (by descending probability) whose mass reaches `p` (`≥ 1` = off);
//! 4. **min-p**: keep tokens whose probability is at least `min_p` times the
//!    highest one, i.e. `logit ≥ max_logit + ln(min_p)` (`0` = off);
//! 5. **temperature**: divide the logits by `T`;
//! 6. a seeded **draw** from the softmax of what is left.
//!
//! Top-p and min-p see the logits before temperature, as in llama.cpp.
//! A temperature `≤ 0` is greedy: the penalised argmax, the lowest id on a tie
//! (the filters in between never remove the argmax, so they are skipped).
//!
//! Ties in the sorting stages are broken by the lower id, so the whole chain is
//! a function of the logits, the accepted history and the seed.
//!
//! After [`Sampler::new`] no stage allocates: the candidate buffer is sized to
//! the vocabulary, the penalty window to `penalty_last_n`.

use std::cmp::Ordering;
use std::fmt;

use super::rng::Xoshiro256;

/// Sampling settings. [`Default`] is llama.cpp's defaults (temperature 0.8,
/// top-k 40, top-p 0.95, min-p 0.05, no penalties over a 64-token window).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `≤ 0` means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// Nucleus threshold in `[0, 1]`; `1` turns it off.
    pub top_p: f32,
    /// Relative probability floor in `[0, 1]`; `0` turns it off.
    pub min_p: f32,
    /// Top-k, top-p and min-p never leave fewer than this many tokens (`0`
    /// and `1` are the same: at least one token always survives).
    pub min_keep: usize,
    /// Repetition penalty (`> 0`); `1` turns it off.
    pub repeat_penalty: f32,
    /// Subtracted once per occurrence in the window; `0` turns it off.
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs in the window; `0` turns it off.
    pub presence_penalty: f32,
    /// How many of the last accepted tokens the penalties look at; `0`
    /// turns all three penalties off.
    pub penalty_last_n: usize,
    /// Seed of the draw: the same seed, logits and history give the same token.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            min_keep: 0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Plain softmax sampling at `temperature`: every filter and penalty off.
    pub fn unfiltered(temperature: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        }
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name: &'static str, value: f32, expected: &'static str| {
            Err(SamplingError::InvalidParam {
                name,
                value,
                expected,
            })
        };
        if self.temperature.is_nan() {
            return bad("temperature", self.temperature, "a number");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", self.top_p, "in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "finite and > 0");
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty, "finite");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "finite");
        }
        Ok(())
    }

    fn penalties_active(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// Why sampling could not go on.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplingError {
    /// A [`SamplingParams`] field is out of range.
    InvalidParam {
        name: &'static str,
        value: f32,
        expected: &'static str,
    },
    /// The vocabulary is empty or does not fit token ids (`u32`).
    InvalidVocabSize(usize),
    /// The logits slice is not one logit per vocabulary entry.
    LogitsLength { expected: usize, got: usize },
    /// A logit is NaN or +∞ (−∞ is allowed: it masks a token).
    InvalidLogit { id: u32, value: f32 },
    /// Every logit is −∞: there is nothing to sample.
    NoCandidates,
    /// An accepted token id is outside the vocabulary.
    TokenOutOfRange { id: u32, vocab_size: usize },
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplingError::InvalidParam {
                name,
                value,
                expected,
            } => write!(
                f,
                "sampling parameter {name} = {value}: expected {expected}"
            ),
            SamplingError::InvalidVocabSize(n) => {
                write!(f, "vocabulary size {n}: expected 1 ..= 2^32")
            }
            SamplingError::LogitsLength { expected, got } => {
                write!(f, "got {got} logits for a vocabulary of {expected} tokens")
            }
            SamplingError::InvalidLogit { id, value } => {
                write!(f, "logit of token {id} is {value}")
            }
            SamplingError::NoCandidates => {
                write!(f, "every logit is -inf: no token can be sampled")
            }
            SamplingError::TokenOutOfRange { id, vocab_size } => write!(
                f,
                "token id {id} is outside the vocabulary of {vocab_size} tokens"
            ),
        }
    }
}

impl std::error::Error for SamplingError {}

/// A surviving token and its probability, as [`Sampler::distribution`] gives
/// them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenProb {
    pub id: u32,
    /// Probability after every stage, temperature included; they sum to 1.
    pub p: f32,
    /// The logit after penalties and temperature.
    pub logit: f32,
}

/// First chunk of tokens top-p sorts when top-k has not sorted them.
const TOP_P_CHUNK: usize = 256;

/// Descending logit, then ascending id: a total order, so unstable sorts and
/// selections give one result.
fn by_logit_desc(a: &TokenProb, b: &TokenProb) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// The penalty window: the last `n` accepted tokens in a ring, with per-id
/// counts and the list of ids whose count is non-zero.
#[derive(Clone, Debug)]
struct PenaltyWindow {
    /// Window length; `0` when penalties are off.
    cap: usize,
    ring: Vec<u32>,
    /// Next slot to overwrite once the ring is full.
    head: usize,
    counts: Vec<u32>,
    /// Ids with `counts[id] > 0`, each once.
    present: Vec<u32>,
}

impl PenaltyWindow {
    fn new(n: usize, vocab_size: usize) -> Self {
        let (n, vocab) = if n == 0 { (0, 0) } else { (n, vocab_size) };
        PenaltyWindow {
            cap: n,
            ring: Vec::with_capacity(n),
            head: 0,
            counts: vec![0; vocab],
            present: Vec::with_capacity(n),
        }
    }

    fn clear(&mut self) {
        for &id in &self.present {
            self.counts[id as usize] = 0;
        }
        self.ring.clear();
        self.present.clear();
        self.head = 0;
    }

    fn push(&mut self, id: u32) {
        let cap = self.cap;
        if cap == 0 {
            return;
        }
        if self.ring.len() < cap {
            self.ring.push(id);
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], id);
            self.head = (self.head + 1) % cap;
            let c = &mut self.counts[old as usize];
            *c -= 1;
            if *c == 0 {
                let at = self.present.iter().position(|&t| t == old);
                if let Some(at) = at {
                    self.present.swap_remove(at);
                }
            }
        }
        let c = &mut self.counts[id as usize];
        *c += 1;
        if *c == 1 {
            self.present.push(id);
        }
    }
}

/// A token sampler for one generation stream.
///
/// ```
/// use spinel_runtime::sampling::{Sampler, SamplingParams};
///
/// let mut s = Sampler::new(SamplingParams::greedy(), 4).unwrap();
/// assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0]).unwrap(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: Xoshiro256,
    /// One entry per vocabulary token; the live candidates are `cand[..n]`.
    cand: Vec<TokenProb>,
    window: PenaltyWindow,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` tokens. All buffers are
    /// allocated here.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Self, SamplingError> {
        params.validate()?;
        if vocab_size == 0 || u32::try_from(vocab_size - 1).is_err() {
            return Err(SamplingError::InvalidVocabSize(vocab_size));
        }
        let window_len = if params.penalties_active() {
            params.penalty_last_n
        } else {
            0
        };
        Ok(Sampler {
            rng: Xoshiro256::new(params.seed),
            window: PenaltyWindow::new(window_len, vocab_size),
            cand: vec![
                TokenProb {
                    id: 0,
                    p: 0.0,
                    logit: 0.0
                };
                vocab_size
            ],
            params,
            vocab_size,
        })
    }

    /// The settings this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The vocabulary size the logits must have.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Forgets the penalty history and restarts the random stream from the
    /// seed: the sampler behaves as freshly built.
    pub fn reset(&mut self) {
        self.window.clear();
        self.rng = Xoshiro256::new(self.params.seed);
    }

    /// Records a token in the penalty window (a generated token, or prompt
    /// tokens, as llama.cpp's CLI does). [`Sampler::sample`] does not accept
    /// the token it returns; [`Sampler::next`] does.
    pub fn accept(&mut self, id: u32) -> Result<(), SamplingError> {
        if id as usize >= self.vocab_size {
            return Err(SamplingError::TokenOutOfRange {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.window.push(id);
        Ok(())
    }

    /// [`Sampler::accept`] for each id in order; stops at the first bad one.
    pub fn accept_all(&mut self, ids: &[u32]) -> Result<(), SamplingError> {
        ids.iter().try_for_each(|&id| self.accept(id))
    }

    /// Samples a token and accepts it into the penalty window.
    pub fn next(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        let id = self.sample(logits)?;
        self.accept(id)?;
        Ok(id)
    }

    /// Draws a token from `logits` (one per vocabulary entry) without
    /// accepting it.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        let n = self.filter(logits)?;
        if n == 1 {
            return Ok(self.cand[0].id);
        }
        let u = self.rng.next_f64();
        let live = &self.cand[..n];
        // `p` are normalised in f64 then stored as f32; walk the cumulative
        // sum and fall back to the last token should rounding leave u above
        // the total.
        let mut cum = 0.0f64;
        for c in live {
            cum += f64::from(c.p);
            if u < cum {
                return Ok(c.id);
            }
        }
        Ok(live.iter().rev().find(|c| c.p > 0.0).unwrap_or(&live[0]).id)
    }

    /// Runs every stage but the draw and returns the surviving tokens with
    /// their probabilities (in the order the draw walks them). Greedy
    /// sampling leaves one token with `p = 1`. Consumes no randomness.
    pub fn distribution(&mut self, logits: &[f32]) -> Result<&[TokenProb], SamplingError> {
        let n = self.filter(logits)?;
        Ok(&self.cand[..n])
    }

    /// Fills `cand`, runs the stages and leaves the survivors in `cand[..n]`
    /// with normalised `p`. Returns `n ≥ 1`.
    fn filter(&mut self, logits: &[f32]) -> Result<usize, SamplingError> {
        if logits.len() != self.vocab_size {
            return Err(SamplingError::LogitsLength {
                expected: self.vocab_size,
                got: logits.len(),
            });
        }
        for (i, (c, &l)) in self.cand.iter_mut().zip(logits).enumerate() {
            if l.is_nan() || l == f32::INFINITY {
                return Err(SamplingError::InvalidLogit {
                    id: i as u32,
                    value: l,
                });
            }
            *c = TokenProb {
                id: i as u32,
                p: 0.0,
                logit: l,
            };
        }
        self.apply_penalties();

        let p = &self.params;
        if p.temperature <= 0.0 {
            // Greedy: the first maximum is the lowest id.
            let mut best = 0;
            for (i, c) in self.cand.iter().enumerate() {
                if c.logit > self.cand[best].logit {
                    best = i;
                }
            }
            if self.cand[best].logit == f32::NEG_INFINITY {
                return Err(SamplingError::NoCandidates);
            }
            self.cand.swap(0, best);
            self.cand[0].p = 1.0;
            return Ok(1);
        }
        if self.cand.iter().all(|c| c.logit == f32::NEG_INFINITY) {
            return Err(SamplingError::NoCandidates);
        }

        let min_keep = p.min_keep.max(1);
        let mut n = self.vocab_size;
        let mut sorted = false;

        // top-k
        if p.top_k > 0 {
            let k = p.top_k.max(min_keep).min(n);
            if k < n {
                self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
                n = k;
            }
            self.cand[..n].sort_unstable_by(by_logit_desc);
            sorted = true;
        }

        // top-p: the shortest prefix, by descending probability, whose mass
        // reaches p. Without top-k there is no sorted list yet; rather than
        // sort the whole vocabulary, select and sort growing chunks of the
        // best tokens until the mass is reached (the total order makes each
        // chunk exactly the next slice of a full sort).
        if p.top_p < 1.0 {
            softmax(&mut self.cand[..n], 1.0);
            let target = f64::from(p.top_p);
            let mut cum = 0.0f64;
            let mut done = 0;
            let mut end = if sorted { n } else { n.min(TOP_P_CHUNK) };
            'grow: loop {
                if !sorted {
                    if end < n {
                        self.cand[done..n].select_nth_unstable_by(end - done - 1, by_logit_desc);
                    }
                    self.cand[done..end].sort_unstable_by(by_logit_desc);
                }
                for i in done..end {
                    cum += f64::from(self.cand[i].p);
                    if cum >= target && i + 1 >= min_keep {
                        n = i + 1;
                        break 'grow;
                    }
                }
                if end == n {
                    break;
                }
                done = end;
                end = n.min(end * 4);
            }
            sorted = true;
        }

        // min-p
        if p.min_p > 0.0 {
            let live = &mut self.cand[..n];
            let max = if sorted {
                live[0].logit
            } else {
                live.iter()
                    .map(|c| c.logit)
                    .fold(f32::NEG_INFINITY, f32::max)
            };
            let min_logit = max + p.min_p.ln();
            let keep = live.iter().filter(|c| c.logit >= min_logit).count();
            if keep >= min_keep {
                if sorted {
                    // A sorted prefix: everything at or above the floor.
                    n = keep;
                } else {
                    // Compact in place, keeping id order.
                    let mut w = 0;
                    for r in 0..n {
                        if self.cand[r].logit >= min_logit {
                            self.cand[w] = self.cand[r];
                            w += 1;
                        }
                    }
                    n = w;
                }
            } else {
                // Fewer than min_keep pass: keep the min_keep best.
                let k = min_keep.min(n);
                if !sorted {
                    self.cand[..n].sort_unstable_by(by_logit_desc);
                }
                n = k;
            }
        }

        // temperature, then the final probabilities
        softmax(&mut self.cand[..n], p.temperature);
        Ok(n)
    }

    fn apply_penalties(&mut self) {
        let p = &self.params;
        if self.window.cap == 0 {
            return;
        }
        for &id in &self.window.present {
            let count = self.window.counts[id as usize];
            // `cand[id]` is token `id`: penalties run before any reordering.
            let l = &mut self.cand[id as usize].logit;
            if *l <= 0.0 {
                *l *= p.repeat_penalty;
            } else {
                *l /= p.repeat_penalty;
            }
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Divides the logits by `temperature` and sets `p` to their softmax.
/// The slice holds at least one finite logit.
fn softmax(live: &mut [TokenProb], temperature: f32) {
    if temperature != 1.0 {
        for c in live.iter_mut() {
            c.logit /= temperature;
        }
    }
    let max = live
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for c in live.iter_mut() {
        let e = f64::from(c.logit - max).exp();
        c.p = e as f32;
        sum += e;
    }
    for c in live.iter_mut() {
        c.p = (f64::from(c.p) / sum) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::Xoshiro256;

    fn softmax_ref(logits: &[f64]) -> Vec<f64> {
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// `(id, p)` of the distribution, sorted by id.
    fn dist(s: &mut Sampler, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = s
            .distribution(logits)
            .unwrap()
            .iter()
            .map(|t| (t.id, t.p))
            .collect();
        v.sort_by_key(|&(id, _)| id);
        v
    }

    fn ids(d: &[(u32, f32)]) -> Vec<u32> {
        d.iter().map(|&(id, _)| id).collect()
    }

    fn assert_probs(d: &[(u32, f32)], expected: &[(u32, f64)]) {
        assert_eq!(d.len(), expected.len(), "{d:?} vs {expected:?}");
        for (&(id, p), &(eid, ep)) in d.iter().zip(expected) {
            assert_eq!(id, eid);
            assert!((f64::from(p) - ep).abs() < 1e-6, "{d:?} vs {expected:?}");
        }
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn params() -> SamplingParams {
        SamplingParams::unfiltered(1.0, 1)
    }

    #[test]
    fn greedy_is_argmax_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), 5).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0, -2.0]).unwrap(), 1);
        assert_eq!(s.sample(&[9.0, 3.0, 1.0, 3.0, 9.0]).unwrap(), 0);
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, -5.0, -7.0, -5.0, f32::NEG_INFINITY])
                .unwrap(),
            1
        );
        assert_eq!(
            dist(&mut s, &[0.0, 1.0, 2.0, 1.0, 2.0]),
            vec![(2, 1.0)],
            "greedy leaves one token with p = 1"
        );
        for t in [0.0, -1.0, f32::NEG_INFINITY] {
            let mut s = Sampler::new(
                SamplingParams {
                    temperature: t,
                    ..params()
                },
                3,
            )
            .unwrap();
            assert_eq!(s.sample(&[0.5, 0.2, 0.7]).unwrap(), 2, "temperature {t}");
        }
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..200 {
            let mut s = Sampler::new(
                SamplingParams {
                    top_k: 1,
                    ..SamplingParams::unfiltered(1.5, seed)
                },
                6,
            )
            .unwrap();
            assert_eq!(s.sample(&[1.0, 1.1, 0.9, 1.1, 1.05, -3.0]).unwrap(), 1);
        }
    }

    #[test]
    fn top_k_keeps_the_k_best_renormalised() {
        let probs = [0.1, 0.4, 0.05, 0.3, 0.15];
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 3,
                ..params()
            },
            5,
        )
        .unwrap();
        let d = dist(&mut s, &logits_of(&probs));
        assert_probs(&d, &[(1, 0.4 / 0.85), (3, 0.3 / 0.85), (4, 0.15 / 0.85)]);
        // k larger than the vocabulary keeps everything.
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 100,
                ..params()
            },
            5,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits_of(&probs))), [0, 1, 2, 3, 4]);
        // min_keep raises k.
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                min_keep: 2,
                ..params()
            },
            5,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits_of(&probs))), [1, 3]);
    }

    #[test]
    fn top_k_ties_keep_the_lower_ids() {
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 2,
                ..params()
            },
            5,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &[1.0, 2.0, 2.0, 2.0, 0.0])), [1, 2]);
    }

    #[test]
    fn top_p_keeps_the_minimal_prefix() {
        // Sorted probabilities 0.5, 0.3, 0.15, 0.05 (ids 2, 0, 3, 1).
        let logits = logits_of(&[0.3, 0.05, 0.5, 0.15]);
        let cases: [(f32, &[u32]); 6] = [
            (0.0, &[2]),
            (0.4, &[2]),
            (0.75, &[0, 2]),
            (0.85, &[0, 2, 3]),
            (0.97, &[0, 1, 2, 3]),
            (1.0, &[0, 1, 2, 3]),
        ];
        for (top_p, expected) in cases {
            let mut s = Sampler::new(SamplingParams { top_p, ..params() }, 4).unwrap();
            let d = dist(&mut s, &logits);
            assert_eq!(ids(&d), expected, "top_p {top_p}");
            let kept: f64 = [0.3, 0.05, 0.5, 0.15]
                .iter()
                .enumerate()
                .filter(|(i, _)| expected.contains(&(*i as u32)))
                .map(|(_, p)| p)
                .sum();
            for &(id, p) in &d {
                let orig = [0.3, 0.05, 0.5, 0.15][id as usize];
                assert!((f64::from(p) - orig / kept).abs() < 1e-6);
            }
        }
        // min_keep wins over the threshold.
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.1,
                min_keep: 3,
                ..params()
            },
            4,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits)), [0, 2, 3]);
    }

    /// Top-p over a large vocabulary (the chunked selection path) keeps
    /// exactly the prefix a full sort would.
    #[test]
    fn top_p_chunked_selection_equals_full_sort() {
        let mut rng = Xoshiro256::new(11);
        for (vocab, spread) in [
            (300usize, 8.0f64),
            (5000, 4.0),
            (20_000, 1.0),
            (20_000, 30.0),
        ] {
            // Quantised logits: many ties.
            let logits: Vec<f32> = (0..vocab)
                .map(|_| ((rng.next_f64() * spread * 4.0).floor() / 4.0) as f32)
                .collect();
            // Reference: full sort, the sampler's own softmax arithmetic.
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| {
                logits[b as usize]
                    .total_cmp(&logits[a as usize])
                    .then(a.cmp(&b))
            });
            let max = logits[order[0] as usize];
            let e: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for top_p in [0.05f32, 0.3, 0.6, 0.9, 0.99, 0.999] {
                let mut cum = 0.0f64;
                let mut keep = vocab;
                for (i, &id) in order.iter().enumerate() {
                    cum += f64::from((f64::from(e[id as usize] as f32) / sum) as f32);
                    if cum >= f64::from(top_p) {
                        keep = i + 1;
                        break;
                    }
                }
                let mut want: Vec<u32> = order[..keep].to_vec();
                want.sort_unstable();
                let mut s = Sampler::new(SamplingParams { top_p, ..params() }, vocab).unwrap();
                let got = ids(&dist(&mut s, &logits));
                assert_eq!(got, want, "vocab {vocab} spread {spread} top_p {top_p}");
            }
        }
    }

    #[test]
    fn min_p_is_relative_to_the_top_probability() {
        let logits = logits_of(&[0.3, 0.05, 0.5, 0.15]);
        // Floor = min_p · 0.5.
        let cases: [(f32, &[u32]); 4] = [
            (0.05, &[0, 1, 2, 3]), // floor 0.025
            (0.2, &[0, 2, 3]),     // floor 0.1
            (0.5, &[0, 2]),        // floor 0.25
            (1.0, &[2]),           // only the maximum
        ];
        for (min_p, expected) in cases {
            for top_k in [0, 4] {
                // top_k = 4 keeps everything but takes the sorted path.
                let mut s = Sampler::new(
                    SamplingParams {
                        min_p,
                        top_k,
                        ..params()
                    },
                    4,
                )
                .unwrap();
                assert_eq!(
                    ids(&dist(&mut s, &logits)),
                    expected,
                    "min_p {min_p} top_k {top_k}"
                );
            }
        }
        // Unsorted path with min_keep above the survivors: the best min_keep.
        let mut s = Sampler::new(
            SamplingParams {
                min_p: 1.0,
                min_keep: 2,
                ..params()
            },
            4,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits)), [0, 2]);
    }

    #[test]
    fn temperature_scales_the_logits() {
        let logits = [1.0f32, 2.0, 3.0];
        for t in [0.5f32, 1.0, 2.0, 10.0] {
            let mut s = Sampler::new(SamplingParams::unfiltered(t, 0), 3).unwrap();
            let d = dist(&mut s, &logits);
            let want = softmax_ref(&[1.0 / t as f64, 2.0 / t as f64, 3.0 / t as f64]);
            assert_probs(&d, &[(0, want[0]), (1, want[1]), (2, want[2])]);
        }
    }

    #[test]
    fn stage_order_top_k_then_top_p_then_min_p_then_temperature() {
        let probs = [0.4, 0.3, 0.2, 0.1];
        let logits = logits_of(&probs);
        // top-p alone at 0.5 needs two tokens (0.4 < 0.5) …
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.5,
                ..params()
            },
            4,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits)), [0, 1]);
        // … but after top-k = 2 the first has 4/7 ≥ 0.5.
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 2,
                top_p: 0.5,
                ..params()
            },
            4,
        )
        .unwrap();
        assert_eq!(dist(&mut s, &logits), [(0, 1.0)]);
        // min-p sees the logits before temperature: at T = 100 the tempered
        // probabilities are all ≈ 0.25, yet min-p 0.6 (floor 0.24) still
        // drops 0.2 and 0.1.
        let mut s = Sampler::new(
            SamplingParams {
                min_p: 0.6,
                ..SamplingParams::unfiltered(100.0, 0)
            },
            4,
        )
        .unwrap();
        let d = dist(&mut s, &logits);
        let want = softmax_ref(&[0.4f64.ln() / 100.0, 0.3f64.ln() / 100.0]);
        assert_probs(&d, &[(0, want[0]), (1, want[1])]);
        // top-p also sees the untempered probabilities: at T = 0.01 token 0
        // has ≈ all the tempered mass, yet top-p 0.6 keeps two.
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.6,
                ..SamplingParams::unfiltered(0.01, 0)
            },
            4,
        )
        .unwrap();
        assert_eq!(ids(&dist(&mut s, &logits)), [0, 1]);
    }

    fn penalised(p: SamplingParams, history: &[u32], logits: &[f32]) -> Vec<f64> {
        let mut s = Sampler::new(p, logits.len()).unwrap();
        s.accept_all(history).unwrap();
        let d = dist(&mut s, logits);
        assert_eq!(d.len(), logits.len());
        // Recover the penalised logits from the distribution (temperature 1):
        // ln p differs from the logit by a constant; pin it on token 3, which
        // the histories below never contain.
        let c = f64::from(d[3].1).ln() - f64::from(logits[3]);
        d.iter().map(|&(_, p)| f64::from(p).ln() - c).collect()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn penalties_on_known_logits() {
        let logits = [2.0f32, -1.0, 0.5, 3.0];
        let history = [0, 1, 0, 2]; // counts: 0 → 2, 1 → 1, 2 → 1
        // Repetition: positive divided, negative multiplied.
        let got = penalised(
            SamplingParams {
                repeat_penalty: 2.0,
                ..params()
            },
            &history,
            &logits,
        );
        assert_close(&got, &[1.0, -2.0, 0.25, 3.0]);
        // Frequency and presence: − count·0.1 − 0.5.
        let got = penalised(
            SamplingParams {
                frequency_penalty: 0.1,
                presence_penalty: 0.5,
                ..params()
            },
            &history,
            &logits,
        );
        assert_close(&got, &[1.3, -1.6, -0.1, 3.0]);
        // All three: repetition first, then the subtraction.
        let got = penalised(
            SamplingParams {
                repeat_penalty: 2.0,
                frequency_penalty: 0.1,
                presence_penalty: 0.5,
                ..params()
            },
            &history,
            &logits,
        );
        assert_close(&got, &[0.3, -2.6, -0.35, 3.0]);
    }

    #[test]
    fn penalty_zero_logit_is_multiplied() {
        // 0 ≤ 0 takes the multiply branch (stays 0); presence then applies.
        let got = penalised(
            SamplingParams {
                repeat_penalty: 3.0,
                presence_penalty: 1.0,
                ..params()
            },
            &[0],
            &[0.0, 1.0, 1.0, 1.0],
        );
        assert_close(&got, &[-1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn penalty_window_forgets_old_tokens() {
        let p = SamplingParams {
            frequency_penalty: 1.0,
            penalty_last_n: 3,
            ..params()
        };
        let logits = [0.0f32; 4];
        // 0 0 1 2: the first 0 left the window → counts 0:1, 1:1, 2:1.
        let got = penalised(p.clone(), &[0, 0, 1, 2], &logits);
        assert_close(&got, &[-1.0, -1.0, -1.0, 0.0]);
        // 0 1 1 1 1: only 1s remain, three of them.
        let got = penalised(p.clone(), &[0, 1, 1, 1, 1], &logits);
        assert_close(&got, &[0.0, -3.0, 0.0, 0.0]);
        // penalty_last_n = 0 turns penalties off.
        let got = penalised(
            SamplingParams {
                penalty_last_n: 0,
                ..p
            },
            &[0, 1, 2],
            &logits,
        );
        assert_close(&got, &[0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn penalties_apply_before_greedy() {
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 1.5,
                ..SamplingParams::greedy()
            },
            3,
        )
        .unwrap();
        let logits = [1.0, 1.2, 0.5];
        assert_eq!(s.next(&logits).unwrap(), 1);
        // 1.2 / 1.5 = 0.8 < 1.0
        assert_eq!(s.next(&logits).unwrap(), 0);
        // 1.0 / 1.5 ≈ 0.67 and 0.8: back to 1.
        assert_eq!(s.next(&logits).unwrap(), 1);
        s.reset();
        assert_eq!(s.next(&logits).unwrap(), 1, "reset forgets the history");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed,
                    repeat_penalty: 1.1,
                    ..SamplingParams::default()
                },
                50,
            )
            .unwrap();
            (0..300)
                .map(|_| s.next(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(1234);
        assert_eq!(a, run(1234));
        assert_ne!(a, run(1235));
        // Not degenerate: several distinct tokens.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 3, "{distinct:?}");

        // reset() replays the stream.
        let mut s = Sampler::new(
            SamplingParams {
                seed: 99,
                ..SamplingParams::default()
            },
            50,
        )
        .unwrap();
        let first: Vec<u32> = (0..50).map(|_| s.next(&logits).unwrap()).collect();
        s.reset();
        let second: Vec<u32> = (0..50).map(|_| s.next(&logits).unwrap()).collect();
        assert_eq!(first, second);
    }

    /// Draw counts over `n` draws against `probs`: returns Pearson's χ².
    fn chi_square(s: &mut Sampler, logits: &[f32], probs: &[f64], n: usize) -> f64 {
        let mut counts = vec![0usize; probs.len()];
        for _ in 0..n {
            counts[s.sample(logits).unwrap() as usize] += 1;
        }
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn draws_follow_the_softmax() {
        let logits = [0.5f32, -1.0, 2.0, 0.0, 1.0, -0.5, 1.5, 0.25];
        let l64: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
        // 7 degrees of freedom: P(χ² > 24.32) = 0.001.
        for seed in [1, 2, 3] {
            let mut s = Sampler::new(SamplingParams::unfiltered(1.0, seed), 8).unwrap();
            let chi = chi_square(&mut s, &logits, &softmax_ref(&l64), 100_000);
            assert!(chi < 24.32, "seed {seed}: chi² = {chi}");
        }
        // At T = 0.7 the draw follows softmax(l / 0.7).
        let scaled: Vec<f64> = l64.iter().map(|l| l / 0.7).collect();
        let mut s = Sampler::new(SamplingParams::unfiltered(0.7, 5), 8).unwrap();
        let chi = chi_square(&mut s, &logits, &softmax_ref(&scaled), 100_000);
        assert!(chi < 24.32, "T = 0.7: chi² = {chi}");
        // And does not follow the T = 1 softmax (a wrong temperature is caught).
        let mut s = Sampler::new(SamplingParams::unfiltered(0.7, 5), 8).unwrap();
        let chi = chi_square(&mut s, &logits, &softmax_ref(&l64), 100_000);
        assert!(chi > 1000.0, "T = 0.7 vs T = 1: chi² = {chi}");
    }

    #[test]
    fn filtered_draws_stay_in_the_filtered_set() {
        let probs = [0.3, 0.05, 0.5, 0.15];
        let logits = logits_of(&probs);
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.75,
                ..SamplingParams::unfiltered(1.0, 3)
            },
            4,
        )
        .unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        assert_eq!(counts[1] + counts[3], 0, "{counts:?}");
        // 0.3/0.8 and 0.5/0.8: binomial sd ≈ 68.
        assert!((counts[0] as i64 - 7500).abs() < 400, "{counts:?}");
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let inf = f32::NEG_INFINITY;
        let mut s = Sampler::new(SamplingParams::unfiltered(1.0, 8), 4).unwrap();
        for _ in 0..2000 {
            let t = s.sample(&[inf, 0.0, inf, 0.0]).unwrap();
            assert!(t == 1 || t == 3);
        }
        let mut s = Sampler::new(SamplingParams::default(), 4).unwrap();
        assert_eq!(s.sample(&[inf, inf, 0.0, inf]).unwrap(), 2);
    }

    #[test]
    fn errors_are_named() {
        assert!(matches!(
            Sampler::new(SamplingParams::default(), 0),
            Err(SamplingError::InvalidVocabSize(0))
        ));
        for (p, name) in [
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..params()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..params()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..params()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..params()
                },
                "repeat_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::INFINITY,
                    ..params()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::NAN,
                    ..params()
                },
                "presence_penalty",
            ),
        ] {
            match Sampler::new(p, 4) {
                Err(SamplingError::InvalidParam { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }

        let mut s = Sampler::new(SamplingParams::default(), 3).unwrap();
        assert_eq!(
            s.sample(&[0.0; 4]),
            Err(SamplingError::LogitsLength {
                expected: 3,
                got: 4
            })
        );
        assert!(matches!(
            s.sample(&[0.0, f32::NAN, 0.0]),
            Err(SamplingError::InvalidLogit { id: 1, .. })
        ));
        assert!(matches!(
            s.sample(&[0.0, 0.0, f32::INFINITY]),
            Err(SamplingError::InvalidLogit { id: 2, .. })
        ));
        let inf = f32::NEG_INFINITY;
        assert_eq!(s.sample(&[inf; 3]), Err(SamplingError::NoCandidates));
        let mut g = Sampler::new(SamplingParams::greedy(), 3).unwrap();
        assert_eq!(g.sample(&[inf; 3]), Err(SamplingError::NoCandidates));
        assert_eq!(
            s.accept(3),
            Err(SamplingError::TokenOutOfRange {
                id: 3,
                vocab_size: 3
            })
        );
        let e = SamplingError::TokenOutOfRange {
            id: 3,
            vocab_size: 3,
        };
        assert!(e.to_string().contains("token id 3"));
    }
}
