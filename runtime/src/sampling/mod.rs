//! Choosing the next token, and knowing when to stop.
//!
//! * [`Sampler`]: llama.cpp's sampling chain — repetition / frequency /
//!   presence penalties, top-k, top-p, min-p, temperature, then a seeded draw
//!   (greedy at temperature ≤ 0) — deterministic for a seed and free of heap
//!   allocation per token.
//! * [`StopStrings`]: stop strings over streamed text, across piece
//!   boundaries.
//!
//! End-of-generation token ids and the `max_tokens` budget are the caller's.

mod rng;
mod sampler;
mod stop;

pub use rng::Xoshiro256;
pub use sampler::{Sampler, SamplingError, SamplingParams, TokenProb};
pub use stop::{EmptyStopString, StopStep, StopStrings};
