//! The one error type of the tokenizer module.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::gguf::GgufError;

/// What went wrong building a vocabulary or a tokenizer, or using one.
///
/// Token texts taken from files are shown escaped (`{:?}`).
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenizerError {
    /// Reading a GGUF metadata key failed (missing or of the wrong type).
    Gguf(GgufError),
    /// Reading a tokenizer file failed.
    Io { path: PathBuf, source: io::Error },
    /// A tokenizer JSON file that is not valid JSON.
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A tokenizer JSON file whose content is not what it should be
    /// (`what`: the file; `detail`: the field and the problem).
    BadHfTokenizer { what: &'static str, detail: String },
    /// An HF tokenizer of a kind this converter does not handle.
    UnsupportedHfTokenizer { detail: String },
    /// A `tokenizer.ggml.model` other than `llama` and `gpt2`.
    UnsupportedModel { model: String },
    /// A `tokenizer.ggml.pre` this runtime has no pre-tokenizer for.
    UnsupportedPreTokenizer { pre: String },
    /// The vocabulary has no tokens.
    EmptyVocab,
    /// More tokens than 32-bit ids can number.
    TooManyTokens { n: usize },
    /// A token of byte type whose text is not `<0xNN>`.
    MalformedByteToken { id: u32, text: String },
    /// Text of 4 GiB or more, to be tokenized in one call.
    TextTooLong { len: usize },
    /// A per-token array (`scores`, `token_type`) whose length is not the
    /// number of tokens.
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A token type outside 0..=6.
    InvalidTokenType { id: u32, value: i32 },
    /// Two tokens with the same text (llama.cpp refuses these too).
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    /// A special token id (`what`: the metadata key's short name) that is not
    /// a token of the vocabulary.
    SpecialTokenOutOfRange {
        what: &'static str,
        id: u64,
        n_tokens: usize,
    },
    /// The vocabulary says to add a BOS (or EOS) token but names none.
    MissingSpecialToken { what: &'static str },
    /// A merge (`index` in `tokenizer.ggml.merges`) that is not two
    /// space-separated tokens.
    MalformedMerge { index: usize, merge: String },
    /// A merge whose part or result is not a token of the vocabulary.
    MergeNotInVocab {
        index: usize,
        merge: String,
        missing: String,
    },
    /// A byte-level BPE vocabulary without merges.
    MissingMerges,
    /// A token id at or beyond the vocabulary size.
    UnknownTokenId { id: u32, n_tokens: usize },
    /// Text that is not UTF-8 (`valid_up_to`: the length of the valid prefix).
    InvalidUtf8 { valid_up_to: usize },
    /// Text containing a byte for which the vocabulary has no token (no
    /// byte token, no byte-level character token, no unknown token).
    UnrepresentableByte { byte: u8 },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TokenizerError as E;
        match self {
            E::Gguf(e) => write!(f, "tokenizer metadata: {e}"),
            E::Io { path, source } => write!(f, "{}: {source}", path.display()),
            E::Json { what, source } => write!(f, "{what}: invalid JSON: {source}"),
            E::BadHfTokenizer { what, detail } => write!(f, "{what}: {detail}"),
            E::UnsupportedHfTokenizer { detail } => {
                write!(f, "unsupported HF tokenizer: {detail}")
            }
            E::UnsupportedModel { model } => write!(
                f,
                "unsupported tokenizer model {model:?} (supported: \"llama\", \"gpt2\")"
            ),
            E::UnsupportedPreTokenizer { pre } => {
                write!(f, "unsupported pre-tokenizer {pre:?} (supported:")?;
                for (name, _) in super::PreTokenizer::GGUF_NAMES {
                    write!(f, " {name}")?;
                }
                f.write_str(")")
            }
            E::EmptyVocab => write!(f, "the vocabulary has no tokens"),
            E::TooManyTokens { n } => write!(f, "{n} tokens are more than 32-bit ids can number"),
            E::MalformedByteToken { id, text } => {
                write!(
                    f,
                    "token {id} has byte type but its text {text:?} is not <0xNN>"
                )
            }
            E::TextTooLong { len } => {
                write!(
                    f,
                    "{len} bytes of text are too many to tokenize in one call"
                )
            }
            E::LengthMismatch {
                what,
                expected,
                found,
            } => write!(f, "{what} has {found} entries for {expected} tokens"),
            E::InvalidTokenType { id, value } => {
                write!(f, "token {id} has type {value}, outside 0..=6")
            }
            E::DuplicateToken {
                text,
                first,
                second,
            } => write!(f, "tokens {first} and {second} have the same text {text:?}"),
            E::SpecialTokenOutOfRange { what, id, n_tokens } => write!(
                f,
                "{what} token id {id} is not below the vocabulary size {n_tokens}"
            ),
            E::MissingSpecialToken { what } => write!(
                f,
                "the vocabulary asks to add a {what} token but has no {what} token id"
            ),
            E::MalformedMerge { index, merge } => {
                write!(
                    f,
                    "merge {index} ({merge:?}) is not two space-separated tokens"
                )
            }
            E::MergeNotInVocab {
                index,
                merge,
                missing,
            } => write!(
                f,
                "merge {index} ({merge:?}): {missing:?} is not a token of the vocabulary"
            ),
            E::MissingMerges => write!(f, "a byte-level BPE vocabulary needs merges"),
            E::UnknownTokenId { id, n_tokens } => {
                write!(
                    f,
                    "token id {id} is not below the vocabulary size {n_tokens}"
                )
            }
            E::InvalidUtf8 { valid_up_to } => {
                write!(f, "text is not UTF-8 (valid up to byte {valid_up_to})")
            }
            E::UnrepresentableByte { byte } => write!(
                f,
                "byte 0x{byte:02X} has no token in this vocabulary (and there is no unknown token)"
            ),
        }
    }
}

impl std::error::Error for TokenizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenizerError::Gguf(e) => Some(e),
            TokenizerError::Io { source, .. } => Some(source),
            TokenizerError::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<GgufError> for TokenizerError {
    fn from(e: GgufError) -> Self {
        TokenizerError::Gguf(e)
    }
}

/// The result type of the tokenizer module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
