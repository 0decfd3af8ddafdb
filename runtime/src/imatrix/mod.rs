//! Importance matrices (llama.cpp's `llama-imatrix`): per weight matrix,
//! the sum over tokens of each input column's squared activation, which
//! `spinel quantize --imatrix` (like `llama-quantize --imatrix`) uses to
//! weight the quantization error of each column.

mod collect;
mod file;

pub use collect::{CollectError, MIN_ROWS, Options, compute};

pub use file::{Entry, Imatrix, ImatrixError, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE, KEY_DATASETS};
