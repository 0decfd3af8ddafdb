//! Speculative decoding: cheap guesses of the next tokens, checked by the
//! model in one batched forward pass that reads the weights once.
//!
//! A *drafter* proposes up to `draft_max` tokens that continue the context:
//!
//! * **prompt lookup** ([`Draft::PromptLookup`]): the last `n` tokens
//!   (`n` from `ngram` down to 1) are searched for earlier in the context,
//!   and the tokens that followed their latest earlier occurrence are the
//!   draft. No second model; strong when the answer quotes its prompt
//!   (summaries, edits, retrieval answers, code).
//! * **a draft model** ([`Draft::Model`]): a small model with the same
//!   vocabulary generates the draft greedily, keeping its own KV cache in
//!   step with the context.
//!
//! The target model then runs the last sampled token and the draft as one
//! batch; the token after each position is sampled from that position's
//! logits, in order, with the session's sampler (penalties, grammar and
//! random stream as without speculation). A drafted token is kept while it
//! equals the sampled one; the first difference ends the round with the
//! sampled token, and a fully accepted draft earns one more token.
//!
//! Drafts are deterministic (a one-hot draft distribution q), so this is
//! the standard accept/reject rule: token d is accepted with probability
//! min(1, p(d)/q(d)) = p(d), and on rejection the replacement is drawn
//! from (p − q)⁺ normalised, which is p without d — exactly what sampling
//! t ~ p and comparing it with d does. The output therefore has the target
//! model's distribution, and with the same random stream it is the very
//! text non-speculative decoding gives (greedy included), up to the float
//! summation order of the batched products.

use std::sync::Arc;

use crate::model::{State, StateOptions};

use super::{Engine, EngineError};

/// Where drafts come from.
#[derive(Clone, Debug)]
pub enum Draft {
    /// Tokens that followed an earlier occurrence of the context's last
    /// `ngram` (down to 1) tokens.
    PromptLookup { ngram: usize },
    /// A smaller model with the same vocabulary, run greedily.
    Model(Arc<Engine>),
}

/// Speculative decoding settings of a generation.
#[derive(Clone, Debug)]
pub struct SpeculativeOptions {
    pub draft: Draft,
    /// Most tokens drafted per round (llama.cpp's `--draft-max`).
    pub draft_max: usize,
    /// Rounds with fewer drafted tokens run as plain decode steps
    /// (`--draft-min`).
    pub draft_min: usize,
    /// A draft model stops drafting when its most likely token's
    /// probability falls below this (`--draft-p-min`).
    pub p_min: f32,
}

impl SpeculativeOptions {
    /// Prompt lookup over n-grams of up to `ngram` tokens.
    pub fn prompt_lookup(ngram: usize, draft_max: usize) -> Result<Self, EngineError> {
        if ngram == 0 {
            return Err(EngineError::Speculative {
                reason: "the lookup n-gram must be at least 1 token".into(),
            });
        }
        Self::new(Draft::PromptLookup { ngram }, draft_max)
    }

    /// A draft model; its vocabulary must be the target's, token for token.
    pub fn draft_model(
        target: &Engine,
        draft: Arc<Engine>,
        draft_max: usize,
    ) -> Result<Self, EngineError> {
        let (a, b) = (target.tokenizer(), draft.tokenizer());
        if a.n_tokens() != b.n_tokens() {
            return Err(EngineError::Speculative {
                reason: format!(
                    "the draft model's vocabulary has {} tokens, the model's {}",
                    b.n_tokens(),
                    a.n_tokens()
                ),
            });
        }
        if target.model().config().n_vocab != draft.model().config().n_vocab {
            return Err(EngineError::Speculative {
                reason: "the draft model's output size differs from the model's".into(),
            });
        }
        for id in 0..a.n_tokens() as u32 {
            if a.token_to_piece(id)? != b.token_to_piece(id)? {
                return Err(EngineError::Speculative {
                    reason: format!(
                        "token {id} differs between the model and the draft model \
                         (they must share a vocabulary)"
                    ),
                });
            }
        }
        Self::new(Draft::Model(draft), draft_max)
    }

    fn new(draft: Draft, draft_max: usize) -> Result<Self, EngineError> {
        if draft_max == 0 {
            return Err(EngineError::Speculative {
                reason: "draft_max must be at least 1".into(),
            });
        }
        Ok(SpeculativeOptions {
            draft,
            draft_max,
            draft_min: 0,
            p_min: 0.75,
        })
    }
}

/// The drafted tokens following `context` by prompt lookup: for `n` from
/// `ngram` down to 1, the tokens after the latest earlier occurrence of the
/// last `n` tokens, up to `max` of them.
pub fn lookup_draft(context: &[u32], ngram: usize, max: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = context.len();
    for n in (1..=ngram.min(len.saturating_sub(1))).rev() {
        let tail = &context[len - n..];
        // Latest earlier start of the n-gram, its continuation in range.
        let found = (0..len - n).rev().find(|&s| &context[s..s + n] == tail);
        if let Some(s) = found {
            let from = s + n;
            let take = max.min(len - from);
            out.extend_from_slice(&context[from..from + take]);
            return;
        }
    }
}

/// A draft model's session-long state: its KV cache and the tokens in it.
#[derive(Debug)]
pub(super) struct DraftState {
    engine: Arc<Engine>,
    state: State,
    cached: Vec<u32>,
}

impl DraftState {
    pub(super) fn new(
        engine: Arc<Engine>,
        n_ctx: usize,
        n_threads: usize,
    ) -> Result<Self, EngineError> {
        let state = engine.model().new_state_with(&StateOptions {
            n_ctx: Some(n_ctx),
            n_threads: Some(n_threads),
            ..StateOptions::default()
        })?;
        Ok(DraftState {
            engine,
            state,
            cached: Vec::new(),
        })
    }

    /// Bytes of its KV cache and buffers.
    pub(super) fn kv_cache_bytes(&self) -> usize {
        self.state.kv_cache_bytes() + self.state.scratch_bytes()
    }

    /// Whether this state belongs to `engine`.
    pub(super) fn is_for(&self, engine: &Arc<Engine>) -> bool {
        Arc::ptr_eq(&self.engine, engine)
    }

    /// Drafts up to `max` tokens after `context` greedily, stopping early
    /// when the draft model is unsure (top probability below `p_min`).
    pub(super) fn propose(
        &mut self,
        context: &[u32],
        max: usize,
        p_min: f32,
        out: &mut Vec<u32>,
    ) -> Result<(), EngineError> {
        out.clear();
        let model = self.engine.model();
        let max = max.min(self.state.n_ctx().saturating_sub(context.len()));
        if max == 0 {
            return Ok(());
        }
        // Bring the cache to `context`, keeping what it shares; at least the
        // last token is run for its logits.
        let common = self
            .cached
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count()
            .min(context.len() - 1);
        self.state.truncate(common);
        self.cached.truncate(common);
        model.forward(&mut self.state, &context[common..])?;
        self.cached.extend_from_slice(&context[common..]);
        loop {
            let (id, p) = top_token(self.state.logits());
            if p < p_min {
                break;
            }
            out.push(id);
            if out.len() == max {
                break;
            }
            model.forward(&mut self.state, &[id])?;
            self.cached.push(id);
        }
        Ok(())
    }
}

/// The most likely token and its softmax probability.
fn top_token(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best as u32, 1.0 / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_latest_longest_match() {
        let mut out = Vec::new();
        // "1 2 3 9 ... 1 2 3 4 5 ... 2 3" → after "2 3": latest is "4 5".
        let ctx = [1, 2, 3, 9, 7, 1, 2, 3, 4, 5, 8, 2, 3];
        lookup_draft(&ctx, 3, 4, &mut out);
        assert_eq!(out, [4, 5, 8, 2]);
        // A 3-gram "8 2 3" never occurred before; "2 3" did.
        lookup_draft(&ctx, 2, 2, &mut out);
        assert_eq!(out, [4, 5]);
        // Nothing to find.
        lookup_draft(&[1, 2, 3], 3, 4, &mut out);
        assert!(out.is_empty());
        lookup_draft(&[], 3, 4, &mut out);
        assert!(out.is_empty());
        // The continuation stops at the end of the context.
        lookup_draft(&[5, 6, 5], 1, 8, &mut out);
        assert_eq!(out, [6, 5]);
    }

    #[test]
    fn top_token_probability() {
        let (id, p) = top_token(&[0.0, (3.0f32).ln(), f32::NEG_INFINITY]);
        assert_eq!(id, 1);
        assert!((p - 0.75).abs() < 1e-6);
    }
}
