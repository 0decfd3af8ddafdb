//! The one error type of the foreign API, and the one place runtime errors
//! become it.

use std::fmt;

use spinel_runtime::engine::EngineError;
use spinel_runtime::gguf::GgufError;
use spinel_runtime::model::ModelError;
use spinel_runtime::vision::VisionError;

/// What went wrong, in the few kinds an app can act on; `reason` says the
/// rest. Kotlin and Swift see one exception / error type with a case each.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Error)]
pub enum SpinelError {
    /// The model file could not be opened or read (missing, unreadable).
    Io { reason: String },
    /// The file is not a model Spinel can run (not GGUF, unsupported
    /// architecture or tensor type, inconsistent hyperparameters), or the
    /// mmproj file is not one that fits the model.
    InvalidModel { reason: String },
    /// An argument is out of range: a sampling parameter, an empty stop
    /// string, an empty prompt, a memory budget too small for one position;
    /// an image that is not PNG or JPEG, corrupt, truncated or over the
    /// pixel cap; images sent to a model without a vision tower.
    InvalidArgument { reason: String },
    /// The conversation does not fit in the session's context.
    ContextFull { reason: String },
    /// The model's chat template is missing, does not compile or failed to
    /// render the conversation.
    ChatTemplate { reason: String },
    /// Encoding or decoding tokens failed (an id outside the vocabulary …).
    Tokenizer { reason: String },
    /// A saved chat could not be written, or not restored: a file of
    /// another model, KV cache type or context length, a truncated or a
    /// corrupted file. Nothing is partly restored.
    SessionFile { reason: String },
    /// A download failed on the network or with an HTTP error; the part
    /// fetched so far is kept, so downloading again resumes.
    Download { reason: String },
    /// A downloaded file's SHA-256 is not the expected one (it was deleted).
    ChecksumMismatch { reason: String },
    /// Cancelled by the app.
    Cancelled { reason: String },
    /// A bug: a panic inside Spinel or a listener, caught at the boundary.
    Internal { reason: String },
}

impl fmt::Display for SpinelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, reason) = match self {
            SpinelError::Io { reason } => ("i/o", reason),
            SpinelError::InvalidModel { reason } => ("invalid model", reason),
            SpinelError::InvalidArgument { reason } => ("invalid argument", reason),
            SpinelError::ContextFull { reason } => ("context full", reason),
            SpinelError::ChatTemplate { reason } => ("chat template", reason),
            SpinelError::Tokenizer { reason } => ("tokenizer", reason),
            SpinelError::SessionFile { reason } => ("session file", reason),
            SpinelError::Download { reason } => ("download", reason),
            SpinelError::ChecksumMismatch { reason } => ("checksum mismatch", reason),
            SpinelError::Cancelled { reason } => ("cancelled", reason),
            SpinelError::Internal { reason } => ("internal error", reason),
        };
        write!(f, "{kind}: {reason}")
    }
}

impl std::error::Error for SpinelError {}

impl From<EngineError> for SpinelError {
    fn from(e: EngineError) -> Self {
        let reason = e.to_string();
        match e {
            EngineError::Model(ModelError::Gguf(GgufError::Io { .. })) => {
                SpinelError::Io { reason }
            }
            EngineError::Model(ModelError::ContextFull { .. })
            | EngineError::PromptTooLong { .. } => SpinelError::ContextFull { reason },
            EngineError::Model(_) => SpinelError::InvalidModel { reason },
            EngineError::Tokenizer(_) => SpinelError::Tokenizer { reason },
            EngineError::SessionFile { .. } => SpinelError::SessionFile { reason },
            EngineError::ChatTemplate(_) | EngineError::NoChatTemplate { .. } => {
                SpinelError::ChatTemplate { reason }
            }
            EngineError::Sampling(_)
            | EngineError::EmptyStopString
            | EngineError::EmptyPrompt
            | EngineError::KvBudget { .. }
            | EngineError::Grammar { .. }
            | EngineError::Speculative { .. }
            | EngineError::NoVision => SpinelError::InvalidArgument { reason },
            EngineError::Vision(e) => match e {
                VisionError::UnknownFormat
                | VisionError::Decode { .. }
                | VisionError::TooLarge { .. }
                | VisionError::Empty
                | VisionError::Prompt(_)
                | VisionError::Budget { .. } => SpinelError::InvalidArgument { reason },
                VisionError::Io { .. } => SpinelError::Io { reason },
                VisionError::Config(_) | VisionError::Weights(_) | VisionError::Mismatch(_) => {
                    SpinelError::InvalidModel { reason }
                }
            },
            _ => SpinelError::Internal { reason },
        }
    }
}

impl From<ModelError> for SpinelError {
    fn from(e: ModelError) -> Self {
        EngineError::Model(e).into()
    }
}

impl From<spinel_runtime::tokenizer::TokenizerError> for SpinelError {
    fn from(e: spinel_runtime::tokenizer::TokenizerError) -> Self {
        EngineError::Tokenizer(e).into()
    }
}

impl From<VisionError> for SpinelError {
    fn from(e: VisionError) -> Self {
        EngineError::Vision(e).into()
    }
}
