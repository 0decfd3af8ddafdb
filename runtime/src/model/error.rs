//! The one error type of loading a model and running it.

use std::fmt;

use spinel_quant::GgmlType;

use crate::gguf::GgufError;

/// What went wrong loading a model or running its forward pass.
///
/// Loading checks everything the forward pass relies on (hyperparameters,
/// every tensor's presence, shape, type and alignment), so a model that loaded
/// only fails at run time on bad input: an empty batch, a token outside the
/// vocabulary, a context that is full, or a state made for another model.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading the file or its metadata failed (includes missing keys and
    /// keys of the wrong type).
    Gguf(GgufError),
    /// `general.architecture` names an architecture Spinel does not run.
    UnsupportedArchitecture { arch: String },
    /// The file asks for a feature of its architecture that is not
    /// implemented (for example YaRN RoPE scaling).
    Unsupported { what: String },
    /// A hyperparameter with an impossible value.
    BadHyperparameter { key: String, reason: String },
    /// A tensor the architecture needs is not in the file.
    MissingTensor { name: String },
    /// A tensor whose dimensions (ggml order, `ne0` first) are not what the
    /// hyperparameters imply.
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// A tensor whose data is not aligned for its element type (possible in
    /// files with `general.alignment` below 4).
    MisalignedTensor { name: String, ty: GgmlType },
    /// [`forward`](super::Model::forward) was given no tokens.
    EmptyInput,
    /// A token id that is not below the vocabulary size.
    TokenOutOfRange {
        token: u32,
        index: usize,
        n_vocab: usize,
    },
    /// The tokens do not fit in what is left of the context.
    ContextFull {
        n_past: usize,
        n_new: usize,
        n_ctx: usize,
    },
    /// A context length or batch size that is zero or too large to allocate.
    BadStateSize { what: &'static str, value: usize },
    /// A KV cache type whose blocks do not divide the model's head size
    /// (Q8_0 and Q4_0 need a multiple of 32).
    KvCacheHeadSize {
        /// `"K"` or `"V"`.
        which: &'static str,
        ty: GgmlType,
        head_dim: usize,
    },
    /// A state created by a model of another shape.
    StateMismatch,
    /// A multi-sequence step given a number of tokens other than one per
    /// sequence, or more sequences than the state's batch holds.
    BatchMismatch { tokens: usize, sequences: usize },
    /// The state's worker threads could not be started.
    Threads(std::io::Error),
    /// A batched decode step (run by another session's thread) failed.
    BatchFailed { message: String },
    /// Reading a saved cache failed (a short or unreadable file).
    Io(std::io::Error),
    /// A step of the forward pass panicked on one of the state's threads
    /// (a bug); the state's cache may hold a partial batch.
    WorkerPanicked { message: String },
    /// Image input (cross-attention states or mask) that does not fit the
    /// model or the prompt.
    BadImageInput { reason: String },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Gguf(e) => write!(f, "{e}"),
            ModelError::UnsupportedArchitecture { arch } => write!(
                f,
                "unsupported architecture {arch:?} (supported: \"llama\", \"llama4\", \"mllama\")"
            ),
            ModelError::Unsupported { what } => write!(f, "unsupported model feature: {what}"),
            ModelError::BadHyperparameter { key, reason } => {
                write!(f, "bad hyperparameter {key:?}: {reason}")
            }
            ModelError::MissingTensor { name } => write!(f, "missing tensor {name:?}"),
            ModelError::TensorShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor {name:?} has dimensions {found:?}, expected {expected:?}"
            ),
            ModelError::MisalignedTensor { name, ty } => write!(
                f,
                "tensor {name:?} ({ty}) is not aligned in memory for its type"
            ),
            ModelError::BadImageInput { reason } => write!(f, "bad image input: {reason}"),
            ModelError::EmptyInput => write!(f, "no tokens to process"),
            ModelError::TokenOutOfRange {
                token,
                index,
                n_vocab,
            } => write!(
                f,
                "token id {token} at index {index} is out of range (vocabulary size {n_vocab})"
            ),
            ModelError::ContextFull {
                n_past,
                n_new,
                n_ctx,
            } => write!(
                f,
                "{n_new} tokens do not fit in the context: {n_past} of {n_ctx} positions are \
                 already used"
            ),
            ModelError::BadStateSize { what, value } => {
                write!(f, "{what} of {value} is zero or too large")
            }
            ModelError::KvCacheHeadSize {
                which,
                ty,
                head_dim,
            } => write!(
                f,
                "a {} {which} cache needs a head size that is a multiple of {}, and this \
                 model's is {head_dim} (use f16 or f32)",
                ty.name(),
                ty.block_size()
            ),
            ModelError::StateMismatch => {
                write!(f, "the state was created for a model of another shape")
            }
            ModelError::BatchMismatch { tokens, sequences } => write!(
                f,
                "a multi-sequence step needs one token per sequence (at most the batch size): \
                 {tokens} tokens for {sequences}"
            ),
            ModelError::Threads(e) => write!(f, "starting worker threads: {e}"),
            ModelError::Io(e) => write!(f, "reading the saved KV cache: {e}"),
            ModelError::BatchFailed { message } => {
                write!(f, "the batched decode step failed: {message}")
            }
            ModelError::WorkerPanicked { message } => {
                write!(f, "the forward pass panicked on a worker thread: {message}")
            }
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Gguf(e) => Some(e),
            ModelError::Threads(e) => Some(e),
            _ => None,
        }
    }
}

impl From<super::pool::JobPanicked> for ModelError {
    fn from(e: super::pool::JobPanicked) -> Self {
        ModelError::WorkerPanicked { message: e.message }
    }
}

impl From<GgufError> for ModelError {
    fn from(e: GgufError) -> Self {
        ModelError::Gguf(e)
    }
}
