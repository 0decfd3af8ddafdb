//! The one error type of loading an engine and running sessions.

use std::fmt;

use crate::chat::ChatTemplateError;
use crate::model::ModelError;
use crate::sampling::{EmptyStopString, SamplingError};
use crate::tokenizer::TokenizerError;

/// What went wrong loading a model into an [`Engine`](super::Engine) or
/// generating with a [`Session`](super::Session).
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// Loading the model or running its forward pass failed.
    Model(ModelError),
    /// Building the tokenizer, encoding a prompt or decoding a token failed.
    Tokenizer(TokenizerError),
    /// The chat template failed to compile or to render the conversation.
    ChatTemplate(ChatTemplateError),
    /// The model's chat template could not be loaded (the reason is
    /// [`ChatTemplateError`]'s message), so the session cannot chat.
    NoChatTemplate { reason: String },
    /// A sampling parameter is out of range (or the logits were unusable).
    Sampling(SamplingError),
    /// A stop string is empty.
    EmptyStopString,
    /// There is nothing to run: the prompt has no tokens.
    EmptyPrompt,
    /// The prompt does not fit in the session's context.
    PromptTooLong { prompt_tokens: usize, n_ctx: usize },
    /// The memory budget leaves no room for even one position of the KV
    /// cache.
    KvBudget { budget: usize, per_position: usize },
    /// A saved session could not be written or read back: `reason` says
    /// why (unreadable, not a session file, another model, truncated …).
    SessionFile { path: String, reason: String },
    /// A grammar or JSON Schema constraint is unusable, or the grammar
    /// allows no token at some point of the generation.
    Grammar { reason: String },
    /// Speculative decoding settings are unusable (a draft model with
    /// another vocabulary, a zero draft length …).
    Speculative { reason: String },
    /// Images were given to an engine without a vision model
    /// ([`Engine::load_mmproj`](super::Engine::load_mmproj)).
    NoVision,
    /// An image, the mmproj file or an image prompt is unusable.
    Vision(crate::vision::VisionError),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Model(e) => write!(f, "{e}"),
            EngineError::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            EngineError::ChatTemplate(e) => write!(f, "{e}"),
            EngineError::NoChatTemplate { reason } => {
                write!(f, "the model's chat template is unusable: {reason}")
            }
            EngineError::Sampling(e) => write!(f, "{e}"),
            EngineError::EmptyStopString => write!(f, "a stop string is empty"),
            EngineError::SessionFile { path, reason } => write!(f, "session file {path}: {reason}"),
            EngineError::Grammar { reason } => write!(f, "{reason}"),
            EngineError::Speculative { reason } => write!(f, "speculative decoding: {reason}"),
            EngineError::EmptyPrompt => write!(f, "the prompt has no tokens"),
            EngineError::NoVision => write!(
                f,
                "images need a vision model: this engine has no mmproj (a text-only model \
                 takes no images)"
            ),
            EngineError::Vision(e) => write!(f, "{e}"),
            EngineError::PromptTooLong {
                prompt_tokens,
                n_ctx,
            } => write!(
                f,
                "the prompt is {prompt_tokens} tokens long but the context holds only {n_ctx} \
                 (shorten the prompt or ask for a longer context)"
            ),
            EngineError::KvBudget {
                budget,
                per_position,
            } => write!(
                f,
                "a KV cache budget of {budget} bytes holds no position \
                 ({per_position} bytes each)"
            ),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Model(e) => Some(e),
            EngineError::Tokenizer(e) => Some(e),
            EngineError::ChatTemplate(e) => Some(e),
            EngineError::Sampling(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        EngineError::Model(e)
    }
}

impl From<TokenizerError> for EngineError {
    fn from(e: TokenizerError) -> Self {
        EngineError::Tokenizer(e)
    }
}

impl From<ChatTemplateError> for EngineError {
    fn from(e: ChatTemplateError) -> Self {
        EngineError::ChatTemplate(e)
    }
}

impl From<SamplingError> for EngineError {
    fn from(e: SamplingError) -> Self {
        EngineError::Sampling(e)
    }
}

impl From<EmptyStopString> for EngineError {
    fn from(_: EmptyStopString) -> Self {
        EngineError::EmptyStopString
    }
}

impl From<crate::vision::VisionError> for EngineError {
    fn from(e: crate::vision::VisionError) -> Self {
        EngineError::Vision(e)
    }
}
