//! The one error type of `spinel convert`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::gguf::GgufError;

/// What went wrong converting a Hugging Face checkpoint, and where.
///
/// Every variant names the file, tensor or config field at fault. Names read
/// from the checkpoint are shown escaped (`{:?}`).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConvertError {
    /// Reading, mapping or writing a file failed.
    Io { path: PathBuf, source: io::Error },
    /// A required file of the checkpoint is not there.
    MissingFile { path: PathBuf, what: &'static str },
    /// A JSON file (config, index, tokenizer, generation config) that does
    /// not parse or lacks what it must have.
    BadJson { path: PathBuf, message: String },
    /// A config field is missing, has the wrong type or an unusable value.
    BadConfig { field: String, message: String },
    /// `architectures` in config.json names nothing this converter knows.
    UnsupportedArchitecture { found: Vec<String> },
    /// A config feature the converter cannot represent faithfully (a RoPE
    /// scaling type, a layer pattern …).
    Unsupported { what: String },
    /// A safetensors file that does not parse.
    BadSafetensors { path: PathBuf, message: String },
    /// A tensor stored in a dtype the converter does not read.
    UnsupportedDtype { tensor: String, dtype: String },
    /// The same tensor name in two shards.
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// `model.safetensors.index.json` and the shards disagree.
    IndexMismatch { message: String },
    /// A tensor the architecture needs is not in the checkpoint.
    MissingTensor { tensor: String },
    /// A tensor whose shape is not what the config implies.
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A checkpoint tensor the converter does not know where to put.
    UnexpectedTensor { tensor: String },
    /// tokenizer.json / tokenizer_config.json exist but cannot be used.
    Tokenizer { path: PathBuf, message: String },
    /// Building or checking the GGUF file failed.
    Gguf(GgufError),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConvertError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            MissingFile { path, what } => write!(f, "missing {what}: {}", path.display()),
            BadJson { path, message } => write!(f, "{}: {message}", path.display()),
            BadConfig { field, message } => write!(f, "config.json: {field:?}: {message}"),
            UnsupportedArchitecture { found } => write!(
                f,
                "unsupported architecture {found:?} (supported: {})",
                super::SUPPORTED_ARCHITECTURES.join(", ")
            ),
            Unsupported { what } => write!(f, "unsupported: {what}"),
            BadSafetensors { path, message } => {
                write!(
                    f,
                    "{}: not a valid safetensors file: {message}",
                    path.display()
                )
            }
            UnsupportedDtype { tensor, dtype } => write!(
                f,
                "tensor {tensor:?} has dtype {dtype}; only F32, F16 and BF16 are read"
            ),
            DuplicateTensor {
                tensor,
                first,
                second,
            } => write!(
                f,
                "tensor {tensor:?} is in both {} and {}",
                first.display(),
                second.display()
            ),
            IndexMismatch { message } => write!(f, "model.safetensors.index.json: {message}"),
            MissingTensor { tensor } => write!(f, "missing tensor {tensor:?}"),
            ShapeMismatch {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?} has shape {found:?}, expected {expected:?} from config.json"
            ),
            UnexpectedTensor { tensor } => write!(
                f,
                "tensor {tensor:?} does not belong to this architecture (cannot map it to a GGUF name)"
            ),
            Tokenizer { path, message } => write!(f, "{}: {message}", path.display()),
            Gguf(e) => write!(f, "GGUF: {e}"),
        }
    }
}

impl std::error::Error for ConvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConvertError::Io { source, .. } => Some(source),
            ConvertError::Gguf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GgufError> for ConvertError {
    fn from(e: GgufError) -> Self {
        ConvertError::Gguf(e)
    }
}

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError::BadConfig {
        field: field.to_string(),
        message: message.into(),
    }
}
