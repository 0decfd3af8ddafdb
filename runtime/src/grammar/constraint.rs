//! A grammar applied to sampling: only tokens the grammar allows are drawn.

use std::sync::Arc;

use super::{Grammar, Matcher};
use crate::sampling::{Sampler, SamplingError};
use crate::tokenizer::{TokenType, Tokenizer};

/// Constrains a generation to a grammar, token by token.
///
/// [`sample`](Self::sample) first draws from the unconstrained logits and
/// keeps the token if the grammar allows it (the usual case, one check);
/// only when it does not are the logits of every disallowed token set to
/// −∞ and the draw repeated, as llama.cpp's sampler does. For plain
/// softmax sampling both give the distribution restricted to the allowed
/// tokens; greedy gives the best allowed token.
///
/// End-of-generation tokens are allowed exactly when the text is a whole
/// sentence of the grammar; other control tokens never are. The logits
/// buffer is allocated once.
#[derive(Clone, Debug)]
pub struct TokenConstraint {
    matcher: Matcher,
    masked: Vec<f32>,
}

impl TokenConstraint {
    pub fn new(grammar: Arc<Grammar>, n_vocab: usize) -> TokenConstraint {
        TokenConstraint {
            matcher: Matcher::new(grammar),
            masked: vec![0.0; n_vocab],
        }
    }

    /// The matcher, at the text accepted so far.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Whether the grammar allows token `id` next.
    pub fn allows(&mut self, tok: &Tokenizer, id: u32) -> bool {
        if tok.is_eog(id) {
            return self.matcher.is_complete();
        }
        match tok.token_type(id) {
            Ok(TokenType::Control | TokenType::Unknown | TokenType::Unused) | Err(_) => {
                return false;
            }
            Ok(_) => {}
        }
        match tok.token_to_piece(id) {
            Ok(piece) if !piece.is_empty() => self.matcher.allows_bytes(piece),
            _ => false,
        }
    }

    /// Draws the next token from the tokens the grammar allows (without
    /// accepting it: see [`accept`](Self::accept)).
    /// [`SamplingError::NoCandidates`] when the grammar allows none.
    pub fn sample(
        &mut self,
        sampler: &mut Sampler,
        tok: &Tokenizer,
        logits: &[f32],
    ) -> Result<u32, SamplingError> {
        let id = sampler.sample(logits)?;
        if self.allows(tok, id) {
            return Ok(id);
        }
        if self.masked.len() != logits.len() {
            return Err(SamplingError::LogitsLength {
                expected: self.masked.len(),
                got: logits.len(),
            });
        }
        self.masked.copy_from_slice(logits);
        for t in 0..self.masked.len() {
            if !self.allows(tok, t as u32) {
                self.masked[t] = f32::NEG_INFINITY;
            }
        }
        sampler.sample(&self.masked)
    }

    /// Moves the grammar past token `id` (end-of-generation tokens leave it
    /// as it is). Returns false if the grammar does not allow it.
    pub fn accept(&mut self, tok: &Tokenizer, id: u32) -> bool {
        if tok.is_eog(id) {
            return self.matcher.is_complete();
        }
        match tok.token_to_piece(id) {
            Ok(piece) => self.matcher.accept_bytes(piece),
            Err(_) => false,
        }
    }
}
