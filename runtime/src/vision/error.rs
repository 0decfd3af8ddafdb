//! Errors of image decoding, preprocessing and the vision towers.

use std::fmt;

/// What went wrong with an image or a vision model.
#[derive(Debug)]
pub enum VisionError {
    /// The bytes are neither PNG nor JPEG.
    UnknownFormat,
    /// The decoder rejected the image (corrupt or truncated data).
    Decode {
        format: &'static str,
        detail: String,
    },
    /// The header announces more pixels than the cap (a decompression bomb).
    TooLarge {
        width: u64,
        height: u64,
        max_pixels: u64,
    },
    /// Width or height is zero.
    Empty,
    /// A processor or model setting is missing or invalid.
    Config(String),
    /// Reading a configuration or weight file failed.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A weight is missing or has the wrong shape.
    Weights(String),
    /// The prompt and the images do not fit together.
    Prompt(String),
    /// The mmproj file does not fit the text model (family or width), or
    /// the text model takes no images.
    Mismatch(String),
    /// The vision tower alone needs more memory than the budget.
    Budget { tower_bytes: u64, budget: u64 },
}

impl fmt::Display for VisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VisionError::UnknownFormat => write!(f, "image: not a PNG or JPEG file"),
            VisionError::Budget {
                tower_bytes,
                budget,
            } => write!(
                f,
                "the vision tower needs {} in memory, more than the whole memory budget {}",
                crate::memory::format_size(*tower_bytes),
                crate::memory::format_size(*budget)
            ),
            VisionError::Decode { format, detail } => {
                write!(f, "image: corrupt or truncated {format}: {detail}")
            }
            VisionError::TooLarge {
                width,
                height,
                max_pixels,
            } => write!(
                f,
                "image: {width}x{height} is over the cap of {max_pixels} pixels (refused before decoding)"
            ),
            VisionError::Empty => write!(f, "image: width or height is zero"),
            VisionError::Config(s) => write!(f, "vision config: {s}"),
            VisionError::Io { path, source } => write!(f, "{path}: {source}"),
            VisionError::Weights(s) => write!(f, "vision weights: {s}"),
            VisionError::Prompt(s) => write!(f, "vision prompt: {s}"),
            VisionError::Mismatch(s) => write!(f, "vision model: {s}"),
        }
    }
}

impl std::error::Error for VisionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VisionError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, VisionError>;

/// The non-negative integer `key` of a Hugging Face vision config object.
pub(super) fn field(v: &serde_json::Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(serde_json::Value::as_u64)
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| VisionError::Config(format!("{key} missing or not an integer")))
}
