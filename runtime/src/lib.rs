//! Spinel runtime.
//!
//! * [`gguf`]: reading, mapping and writing GGUF model files.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cache;
pub mod chat;
pub mod convert;
pub mod download;
pub mod engine;
pub mod gguf;
pub mod grammar;
pub mod imatrix;
pub mod memory;
pub mod model;
pub mod perplexity;
pub mod quantize;
pub mod sampling;
#[doc(hidden)]
pub mod synthetic;
pub mod tokenizer;
pub mod vision;
