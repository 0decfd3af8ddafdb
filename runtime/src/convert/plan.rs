//! What the output file holds: output tensors, each with its GGUF name,
//! shape, type and a recipe that produces its rows from checkpoint tensors.

use spinel_quant::GgmlType;

use super::checkpoint::{Checkpoint, SourceTensor};

/// The `--outtype` of a conversion: the type of the 2-D weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl OutType {
    /// Every out type.
    pub const ALL: [OutType; 4] = [OutType::F32, OutType::F16, OutType::BF16, OutType::Q8_0];

    /// The name `--outtype` takes (`f32`, `f16`, `bf16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::BF16 => "bf16",
            OutType::Q8_0 => "q8_0",
        }
    }

    /// Parses an `--outtype` name, case-insensitively.
    pub fn from_name(s: &str) -> Option<OutType> {
        OutType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`: ALL_F32 = 0,
    /// MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7, MOSTLY_BF16 = 32).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::BF16 => 32,
        }
    }

    /// The tensor type of a weight of this out type.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

impl std::fmt::Display for OutType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The type a tensor gets, by llama.cpp's converter's rule
/// (`ModelBase.prepare_tensors`): 1-D tensors, `*_norm.weight`, tensors not
/// named `*.weight` (biases) and the MoE router (`force_f32`) stay F32;
/// everything else takes the out type, except that a Q8_0 tensor whose rows
/// are not a whole number of 32-element blocks falls back to F16.
pub fn tensor_type(name: &str, dims: &[u64], out: OutType, force_f32: bool) -> GgmlType {
    if dims.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") || force_f32
    {
        return GgmlType::F32;
    }
    let t = out.ggml_type();
    if t.is_quantized() && dims[0] % t.block_size() as u64 != 0 {
        return GgmlType::F16;
    }
    t
}

/// How the rows of an output tensor are made.
#[derive(Clone, Debug)]
pub enum Recipe {
    /// The checkpoint tensor as it is (PyTorch shape reversed is the GGUF
    /// shape, so the row-major data is the same).
    Copy(SourceTensor),
    /// llama.cpp's `LlamaModel.permute` for q/k projections (weights and
    /// biases): HF stores each head's rows as two halves (rotate-half RoPE);
    /// GGUF interleaves them (adjacent-pair RoPE). Output row
    /// `h·d + 2j + t` is input row `h·d + t·d/2 + j` for head `h` of
    /// `n_head`, `d` rows per head.
    UnpermuteHeads { src: SourceTensor, n_head: usize },
    /// A transposed slice of a 3-D `[E, C, S]` tensor: output
    /// `[E, R, C]` (row-major; GGUF dims `[C, R, E]`) with
    /// `out[e][r][c] = src[e][c][offset + r]`. Llama 4's fused experts:
    /// `gate_up_proj [E, H, 2I]` gives gate (offset 0) and up (offset I),
    /// `down_proj [E, I, H]` gives down.
    TransposeExperts {
        src: SourceTensor,
        rows: usize,
        offset: usize,
    },
    /// Values computed by the converter (`rope_freqs`).
    Values(Vec<f32>),
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct OutTensor {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGUF dims: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub recipe: Recipe,
}

impl OutTensor {
    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }

    /// Bytes of the tensor's data.
    pub fn n_bytes(&self) -> usize {
        self.ty.row_size(self.row_len()).unwrap_or(0) * self.n_rows()
    }

    /// The checkpoint tensor this is made from, if any.
    pub fn source(&self) -> Option<&SourceTensor> {
        match &self.recipe {
            Recipe::Copy(s)
            | Recipe::UnpermuteHeads { src: s, .. }
            | Recipe::TransposeExperts { src: s, .. } => Some(s),
            Recipe::Values(_) => None,
        }
    }

    /// Produces the tensor's rows as f32, in order, in batches of whole rows
    /// of about `batch_elems` elements (at least one row), handing each to
    /// `sink`.
    pub fn produce<E>(
        &self,
        ckpt: &Checkpoint,
        batch_elems: usize,
        sink: &mut dyn FnMut(&[f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        let row_len = self.row_len();
        let n_rows = self.n_rows();
        let rows_per_batch = (batch_elems / row_len.max(1)).max(1);
        match &self.recipe {
            Recipe::Values(v) => sink(v),
            Recipe::Copy(src) => {
                let mut buf = vec![0f32; rows_per_batch.min(n_rows) * row_len];
                let mut row = 0;
                while row < n_rows {
                    let n = rows_per_batch.min(n_rows - row);
                    let out = &mut buf[..n * row_len];
                    ckpt.read_f32(src, row * row_len, out);
                    sink(out)?;
                    row += n;
                }
                Ok(())
            }
            Recipe::UnpermuteHeads { src, n_head } => {
                // A weight permutes rows; a bias (1-D) permutes elements.
                let (unit, n_units) = if self.dims.len() == 1 {
                    (1, row_len)
                } else {
                    (row_len, n_rows)
                };
                let per_head = n_units / n_head;
                let half = per_head / 2;
                let src_unit = |o: usize| {
                    let (h, rem) = (o / per_head, o % per_head);
                    let (j, t) = (rem / 2, rem % 2);
                    h * per_head + t * half + j
                };
                let units_per_batch = if unit == 1 { n_units } else { rows_per_batch };
                let mut buf = vec![0f32; units_per_batch.min(n_units) * unit];
                let mut first = 0;
                while first < n_units {
                    let n = units_per_batch.min(n_units - first);
                    for (i, out) in buf[..n * unit].chunks_exact_mut(unit).enumerate() {
                        ckpt.read_f32(src, src_unit(first + i) * unit, out);
                    }
                    sink(&buf[..n * unit])?;
                    first += n;
                }
                Ok(())
            }
            Recipe::TransposeExperts { src, rows, offset } => {
                let (n_expert, c, s) = (src.shape[0], src.shape[1], src.shape[2]);
                debug_assert_eq!(row_len, c);
                let mut slab = vec![0f32; c * s];
                let mut buf = vec![0f32; rows_per_batch.min(*rows) * row_len];
                for e in 0..n_expert {
                    ckpt.read_f32(src, e * c * s, &mut slab);
                    let mut r0 = 0;
                    while r0 < *rows {
                        let n = rows_per_batch.min(rows - r0);
                        for (i, out) in buf[..n * row_len].chunks_exact_mut(row_len).enumerate() {
                            let col = offset + r0 + i;
                            for (ci, o) in out.iter_mut().enumerate() {
                                *o = slab[ci * s + col];
                            }
                        }
                        sink(&buf[..n * row_len])?;
                        r0 += n;
                    }
                }
                Ok(())
            }
        }
    }
}
