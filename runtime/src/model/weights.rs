//! The model's tensors: zero-copy views into the file, found by llama.cpp's
//! tensor names and checked against the hyperparameters at load time.

use spinel_quant::{GgmlType, Kernels};

use crate::gguf::GgufFile;

use super::config::{Arch, Config, MoeConfig};
use super::error::ModelError;

type Result<T> = std::result::Result<T, ModelError>;

/// A matrix in the file: `rows` rows of `cols` elements of type `ty`, stored
/// row after row (ggml's `ne0 = cols`, `ne1 … = rows`). Holds where the bytes
/// are, not the bytes, so the model can own the memory they live in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Weight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
    /// Bytes of one activation row in `ty.vec_dot_type()`.
    pub act_row_bytes: usize,
    /// Offset of the first row in the file.
    offset: usize,
}

impl Weight {
    /// The matrix, borrowed from the file's bytes.
    pub fn view<'a>(&self, file: &'a [u8]) -> Mat<'a> {
        Mat {
            w: *self,
            data: &file[self.offset..self.offset + self.rows * self.row_bytes],
        }
    }

    /// A `rows × cols` matrix of `ty` at the start of a buffer of its own
    /// (benchmarks, tests).
    pub fn at_start(ty: GgmlType, rows: usize, cols: usize) -> Option<Weight> {
        Some(Weight {
            ty,
            rows,
            cols,
            row_bytes: ty.row_size(cols)?,
            act_row_bytes: ty.vec_dot_type().row_size(cols)?,
            offset: 0,
        })
    }

    /// Where the matrix's bytes are in the file.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.rows * self.row_bytes
    }

    /// Rows `start..start + n` as a matrix of their own (one expert of a
    /// stacked expert tensor).
    pub fn slice_rows(&self, start: usize, n: usize) -> Weight {
        debug_assert!(start + n <= self.rows);
        Weight {
            rows: n,
            offset: self.offset + start * self.row_bytes,
            ..*self
        }
    }
}

/// A weight matrix with its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub w: Weight,
    pub data: &'a [u8],
}

impl<'a> Mat<'a> {
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.w.row_bytes..(r + 1) * self.w.row_bytes]
    }
}

/// A linear layer `y = W x (+ b)`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub w: Weight,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn view<'a>(&'a self, file: &'a [u8]) -> Lin<'a> {
        Lin {
            w: self.w.view(file),
            bias: self.bias.as_deref(),
        }
    }
}

/// A linear layer with its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Lin<'a> {
    pub w: Mat<'a>,
    pub bias: Option<&'a [f32]>,
}

/// The feed-forward block of a layer.
// One per layer: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Ffn {
    /// SwiGLU: `down(silu(gate(x)) · up(x))`.
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// Llama 4 MoE: a sigmoid router picks the top-k experts; each expert's
    /// input is scaled by its router score; a shared expert is always added.
    Moe(Box<MoeFfn>),
}

#[derive(Debug)]
pub(crate) struct MoeFfn {
    pub moe: MoeConfig,
    /// `[n_expert rows of dim]`.
    pub router: Weight,
    /// `[n_expert · n_ff_expert rows of dim]`, expert after expert.
    pub gate_exps: Weight,
    pub up_exps: Weight,
    /// `[n_expert · dim rows of n_ff_expert]`.
    pub down_exps: Weight,
    pub shared_gate: Linear,
    pub shared_up: Linear,
    pub shared_down: Linear,
}

/// What an mllama cross-attention block adds to a layer's weights (its
/// `wq`..`wo` are the cross-attention projections: q from the text, k/v
/// from the image's cross-attention states).
#[derive(Debug)]
pub(crate) struct CrossAttn {
    /// `[head_dim]`: RMS norm weights of each query / key head.
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    /// `tanh` of the attention and feed-forward gates.
    pub attn_gate: f32,
    pub mlp_gate: f32,
}

#[derive(Debug)]
pub(crate) struct Layer {
    /// Mllama: this layer is a cross-attention block.
    pub cross: Option<CrossAttn>,
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn,
}

#[derive(Debug)]
pub(crate) struct Weights {
    /// `[n_vocab rows of dim]`.
    pub token_embd: Weight,
    pub output_norm: Vec<f32>,
    /// `[n_vocab rows of dim]`; `token_embd` itself when the file has no
    /// `output` tensor (tied embeddings).
    pub output: Weight,
    /// Llama 3.1+ RoPE frequency divisors (`[head_dim / 2]`).
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<Layer>,
}

impl Weights {
    /// Every matrix, for sizing scratch buffers.
    pub fn matrices(&self) -> Vec<Weight> {
        let mut all = vec![self.token_embd, self.output];
        for l in &self.layers {
            all.extend([l.wq.w, l.wk.w, l.wv.w, l.wo.w]);
            match &l.ffn {
                Ffn::Dense { gate, up, down } => all.extend([gate.w, up.w, down.w]),
                Ffn::Moe(m) => all.extend([
                    m.router,
                    m.gate_exps,
                    m.up_exps,
                    m.down_exps,
                    m.shared_gate.w,
                    m.shared_up.w,
                    m.shared_down.w,
                ]),
            }
        }
        all
    }
}

/// Finds and checks the tensors of `file` for `cfg`. Offsets are relative to
/// `file.bytes()`.
pub(crate) fn load(file: &GgufFile<'_>, cfg: &Config) -> Result<Weights> {
    let l = Loader { file };
    let (dim, vocab) = (cfg.dim, cfg.n_vocab);

    // Mllama's embedding has rows past the vocabulary (the image token);
    // its output projection then has to be a tensor of its own.
    let embd_rows = match (cfg.arch, l.file.tensor("token_embd.weight")) {
        (Arch::Mllama, Some(t)) => match t.dims() {
            &[_, n] => usize::try_from(n).unwrap_or(vocab).max(vocab),
            _ => vocab,
        },
        _ => vocab,
    };
    let token_embd = l.matrix("token_embd.weight", &[dim, embd_rows])?;
    let output = match l.file.tensor("output.weight") {
        Some(_) => l.matrix("output.weight", &[dim, vocab])?,
        None if embd_rows == vocab => token_embd,
        None => {
            return Err(ModelError::MissingTensor {
                name: "output.weight".into(),
            });
        }
    };
    let output_norm = l.vector("output_norm.weight", dim)?;
    let rope_freqs = match l.file.tensor("rope_freqs.weight") {
        Some(_) => Some(l.vector("rope_freqs.weight", cfg.head_dim / 2)?),
        None => None,
    };

    let mut layers = Vec::new();
    for il in 0..cfg.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}");
        let linear = |t: &str, cols: usize, rows: usize| -> Result<Linear> {
            Ok(Linear {
                w: l.matrix(&name(&format!("{t}.weight")), &[cols, rows])?,
                bias: l.opt_vector(&name(&format!("{t}.bias")), rows)?,
            })
        };
        let moe = cfg.moe.as_ref().filter(|_| cfg.layer_is_moe(il));
        let ffn = if let Some(moe) = moe {
            let (ne, ff) = (moe.n_expert, moe.n_ff_expert);
            Ffn::Moe(Box::new(MoeFfn {
                moe: moe.clone(),
                router: l.matrix(&name("ffn_gate_inp.weight"), &[dim, ne])?,
                gate_exps: l.matrix(&name("ffn_gate_exps.weight"), &[dim, ff, ne])?,
                up_exps: l.matrix(&name("ffn_up_exps.weight"), &[dim, ff, ne])?,
                down_exps: l.matrix(&name("ffn_down_exps.weight"), &[ff, dim, ne])?,
                shared_gate: linear("ffn_gate_shexp", dim, ff)?,
                shared_up: linear("ffn_up_shexp", dim, ff)?,
                shared_down: linear("ffn_down_shexp", ff, dim)?,
            }))
        } else {
            Ffn::Dense {
                gate: linear("ffn_gate", dim, cfg.n_ff)?,
                up: linear("ffn_up", dim, cfg.n_ff)?,
                down: linear("ffn_down", cfg.n_ff, dim)?,
            }
        };
        let (cross, [q, k, v, o]) = if cfg.layer_is_cross(il) {
            let gate = |t: &str| -> Result<f32> { Ok(l.vector(&name(t), 1)?[0].tanh()) };
            let cross = CrossAttn {
                q_norm: l.vector(&name("cross_attn_q_norm.weight"), cfg.head_dim)?,
                k_norm: l.vector(&name("cross_attn_k_norm.weight"), cfg.head_dim)?,
                attn_gate: gate("cross_attn_attn_gate")?,
                mlp_gate: gate("cross_attn_mlp_gate")?,
            };
            let names = [
                "cross_attn_q",
                "cross_attn_k",
                "cross_attn_v",
                "cross_attn_o",
            ];
            (Some(cross), names)
        } else {
            (None, ["attn_q", "attn_k", "attn_v", "attn_output"])
        };
        layers.push(Layer {
            cross,
            attn_norm: l.vector(&name("attn_norm.weight"), dim)?,
            wq: linear(q, dim, cfg.q_dim())?,
            wk: linear(k, dim, cfg.kv_dim())?,
            wv: linear(v, dim, cfg.kv_dim())?,
            wo: linear(o, cfg.q_dim(), dim)?,
            ffn_norm: l.vector(&name("ffn_norm.weight"), dim)?,
            ffn,
        });
    }
    Ok(Weights {
        token_embd,
        output_norm,
        output,
        rope_freqs,
        layers,
    })
}

struct Loader<'f, 'a> {
    file: &'f GgufFile<'a>,
}

impl Loader<'_, '_> {
    /// A tensor with exactly the dimensions `dims` (ggml order), as a matrix
    /// of `dims[0]`-long rows.
    fn matrix(&self, name: &str, dims: &[usize]) -> Result<Weight> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if trim(t.dims()) != trim(&expected) {
            return Err(ModelError::TensorShape {
                name: name.into(),
                expected,
                found: t.dims().to_vec(),
            });
        }
        let ty = t.ggml_type();
        let cols = dims[0];
        let rows: usize = dims[1..].iter().product();
        // The reader checked that `cols` is a whole number of blocks and that
        // the data is exactly `rows` rows; the activation type has the same
        // block size, but check rather than assume.
        let (Some(row_bytes), Some(act_row_bytes)) =
            (ty.row_size(cols), ty.vec_dot_type().row_size(cols))
        else {
            return Err(ModelError::TensorShape {
                name: name.into(),
                expected,
                found: t.dims().to_vec(),
            });
        };
        // Kernels view rows as slices of blocks or floats; every block type
        // needs at most 4-byte alignment.
        if t.data().as_ptr() as usize % 4 != 0 {
            return Err(ModelError::MisalignedTensor {
                name: name.into(),
                ty,
            });
        }
        let offset = t.data().as_ptr() as usize - self.file.bytes().as_ptr() as usize;
        Ok(Weight {
            ty,
            rows,
            cols,
            row_bytes,
            act_row_bytes,
            offset,
        })
    }

    /// A one-dimensional tensor of `len` elements, converted to f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let w = self.matrix(name, &[len])?;
        let mut v = vec![0.0f32; len];
        let bytes = self.file.bytes();
        (Kernels::get().of(w.ty).to_float)(w.view(bytes).row(0), &mut v);
        Ok(v)
    }

    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.file.tensor(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }
}

/// Dimensions without trailing ones (`[64, 1]` and `[64]` are the same shape).
fn trim(d: &[u64]) -> &[u64] {
    let mut n = d.len();
    while n > 1 && d[n - 1] == 1 {
        n -= 1;
    }
    &d[..n]
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::model::ops::AlignedBuf;

    /// An F32 weight over its own aligned bytes.
    pub fn f32_matrix(data: &[f32], rows: usize, cols: usize) -> (Weight, AlignedBuf) {
        let mut buf = AlignedBuf::zeroed(data.len() * 4);
        buf.bytes_mut().copy_from_slice(bytemuck::cast_slice(data));
        let w = Weight {
            ty: GgmlType::F32,
            rows,
            cols,
            row_bytes: cols * 4,
            act_row_bytes: cols * 4,
            offset: 0,
        };
        (w, buf)
    }
}
