//! `spinel quantize`: rewrite a GGUF file with its weights in another type,
//! choosing each tensor's type as llama.cpp's `llama-quantize` does
//! (`llama_tensor_get_type` in `src/llama-quant.cpp`), so the two tools give
//! files of the same layout and size.
//!
//! Every tensor is dequantized to f32 and quantized again with the
//! reference `from_float` of its new type (ggml's `quantize_row_*_ref`, what
//! `llama-quantize` uses without an importance matrix); a tensor whose type
//! does not change is copied as it is.

pub mod mmproj;
pub mod rotate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use spinel_quant::{GgmlType, Kernels};

use crate::gguf::{GgufError, GgufFile, GgufWriter, Value};

/// A target of `spinel quantize --type` (llama.cpp's `LLAMA_FTYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3KM,
    Q4KS,
    Q4KM,
    Q5KM,
    Q6K,
    /// Non-linear 4-bit blocks of 32 (4.5 bits per weight).
    IQ4NL,
    /// Non-linear 4-bit super-blocks with 6-bit block scales (4.25 bpw).
    IQ4XS,
    /// IQ3_S everywhere, Q4_K/Q5_K for a few tensors (3.44 bpw).
    IQ3S,
    /// IQ3_S with Q4_K attention values, outputs and early ffn_down (3.66 bpw).
    IQ3M,
    /// IQ3_S, IQ3_XXS for attention q/k and the middle ffn gate/up (3.3 bpw;
    /// needs an importance matrix).
    IQ3XS,
    /// IQ3_XXS with IQ2_S attention q/k (3.06 bpw; needs an importance matrix).
    IQ3XXS,
    /// IQ2_S with IQ3_S for sensitive tensors (2.7 bpw; importance matrix).
    IQ2M,
    /// IQ2_XS with IQ3_S for sensitive tensors (2.5 bpw; importance matrix).
    IQ2S,
    /// 2.31 bpw (importance matrix).
    IQ2XS,
    /// 2.06 bpw (importance matrix).
    IQ2XXS,
    /// 1.75 bpw (importance matrix).
    IQ1M,
    /// 1.56 bpw (importance matrix).
    IQ1S,
    /// Meta's W4A8 recipe for its quantized Llama 3.2 (QAT/SpinQuant):
    /// every linear layer in 4-bit groups of 32 with a symmetric scale
    /// (Q4_0 blocks, dotted with Q8_0 per-block activations at run time),
    /// the token embeddings and the output layer in 8 bits (Q8_0). Plain
    /// Q4_0/Q8_0 tensors: llama.cpp runs the file as it is.
    W4A8,
    /// Spinel's mix at iq4_xs's size (needs no importance matrix, but is
    /// best with one): 5-bit token embeddings / output layer
    /// instead of the 6-bit (or, for rows that do not fit 256-blocks,
    /// 8-bit) ones llama.cpp chooses, and the bits saved spent on the
    /// tensors that matter most: 8-bit attention values, 5-bit attention
    /// q/k/output and ffn_down, 4-bit (IQ4_XS/IQ4_NL) ffn gate and up.
    IQ4XSM,
}

impl FileType {
    /// Every target.
    pub const ALL: [FileType; 28] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2K,
        FileType::Q3KM,
        FileType::Q4KS,
        FileType::Q4KM,
        FileType::Q5KM,
        FileType::Q6K,
        FileType::IQ4NL,
        FileType::IQ4XS,
        FileType::IQ3S,
        FileType::IQ3M,
        FileType::IQ3XS,
        FileType::IQ3XXS,
        FileType::IQ2M,
        FileType::IQ2S,
        FileType::IQ2XS,
        FileType::IQ2XXS,
        FileType::IQ1M,
        FileType::IQ1S,
        FileType::W4A8,
        FileType::IQ4XSM,
    ];

    /// The name `--type` takes (llama-quantize's, lower case).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::BF16 => "bf16",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_0 => "q4_0",
            FileType::Q4_1 => "q4_1",
            FileType::Q5_0 => "q5_0",
            FileType::Q5_1 => "q5_1",
            FileType::Q2K => "q2_k",
            FileType::Q3KM => "q3_k_m",
            FileType::Q4KS => "q4_k_s",
            FileType::Q4KM => "q4_k_m",
            FileType::Q5KM => "q5_k_m",
            FileType::Q6K => "q6_k",
            FileType::IQ4NL => "iq4_nl",
            FileType::IQ4XS => "iq4_xs",
            FileType::IQ3S => "iq3_s",
            FileType::IQ3M => "iq3_m",
            FileType::IQ3XS => "iq3_xs",
            FileType::IQ3XXS => "iq3_xxs",
            FileType::IQ2M => "iq2_m",
            FileType::IQ2S => "iq2_s",
            FileType::IQ2XS => "iq2_xs",
            FileType::IQ2XXS => "iq2_xxs",
            FileType::IQ1M => "iq1_m",
            FileType::IQ1S => "iq1_s",
            FileType::W4A8 => "w4a8",
            FileType::IQ4XSM => "iq4_xs_m",
        }
    }

    /// Parses a `--type` name, case-insensitively.
    pub fn from_name(s: &str) -> Option<FileType> {
        FileType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            // llama.cpp has no W4A8 file type: the file is mostly Q4_0 (the
            // preset is named in `spinel.quantize.preset`).
            FileType::Q4_0 | FileType::W4A8 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2K => 10,
            FileType::Q3KM => 12,
            FileType::Q4KS => 14,
            FileType::Q4KM => 15,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::IQ4NL => 25,
            // No llama.cpp file type either: recorded as IQ4_XS, the
            // preset named in `spinel.quantize.preset`.
            FileType::IQ4XS | FileType::IQ4XSM => 30,
            FileType::IQ2XXS => 19,
            FileType::IQ2XS => 20,
            FileType::IQ3XS => 22,
            FileType::IQ3XXS => 23,
            FileType::IQ1S => 24,
            FileType::IQ3S => 26,
            FileType::IQ3M => 27,
            FileType::IQ2S => 28,
            FileType::IQ2M => 29,
            FileType::IQ1M => 31,
            FileType::BF16 => 32,
        }
    }

    /// The type of a tensor with nothing special about it
    /// (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 | FileType::W4A8 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2K => GgmlType::Q2K,
            FileType::Q3KM => GgmlType::Q3K,
            FileType::Q4KS | FileType::Q4KM => GgmlType::Q4K,
            FileType::Q5KM => GgmlType::Q5K,
            FileType::Q6K => GgmlType::Q6K,
            FileType::IQ4NL => GgmlType::IQ4NL,
            FileType::IQ4XS | FileType::IQ4XSM => GgmlType::IQ4XS,
            FileType::IQ3S | FileType::IQ3M | FileType::IQ3XS => GgmlType::IQ3S,
            FileType::IQ3XXS => GgmlType::IQ3XXS,
            FileType::IQ2M => GgmlType::IQ2S,
            FileType::IQ2S | FileType::IQ2XS => GgmlType::IQ2XS,
            FileType::IQ2XXS => GgmlType::IQ2XXS,
            FileType::IQ1M => GgmlType::IQ1M,
            FileType::IQ1S => GgmlType::IQ1S,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role of a tensor in llama.cpp's type choice (`tensor_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        Category::AttnKvB
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `tensor_allows_quantization` for Llama-family tensor names.
fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    let n_dims = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
}

/// What the type choice needs to know about the model.
#[derive(Clone, Copy, Debug)]
struct Hparams {
    n_layer: i64,
    n_gqa: i64,
    n_expert: i64,
}

/// The counters llama.cpp keeps while choosing (`quantize_state_impl`).
struct State {
    hp: Hparams,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    has_tied_embeddings: bool,
    /// Whether an importance matrix is given (llama.cpp's `has_imatrix`).
    has_imatrix: bool,
}

fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// ggml's block size of a type.
fn blck(t: GgmlType) -> u64 {
    t.block_size() as u64
}

/// The 1- and 2-bit i-quant mixes, which llama.cpp treats apart.
fn is_low_bit_iq(ftype: FileType) -> bool {
    use FileType as F;
    matches!(
        ftype,
        F::IQ2XXS | F::IQ2XS | F::IQ1S | F::IQ2S | F::IQ2M | F::IQ1M
    )
}

impl State {
    /// `llama_tensor_get_type_impl` for the file types Spinel offers.
    fn choose_impl(
        &mut self,
        mut new_type: GgmlType,
        nx: u64,
        ftype: FileType,
        cat: Category,
    ) -> GgmlType {
        use FileType as F;
        use GgmlType as T;
        if ftype == F::W4A8 {
            // No mixes: 8 bits for the embeddings and the output layer,
            // 4 for every other matrix.
            return match cat {
                Category::Output | Category::TokenEmbd => T::Q8_0,
                _ => new_type,
            };
        }
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            if nx % blck(new_type) != 0 {
                new_type = T::Q8_0;
            } else if is_low_bit_iq(ftype) || ftype == F::IQ3XXS {
                new_type = T::Q5K;
            } else if new_type != T::Q8_0 {
                new_type = T::Q6K;
            }
        } else if cat == Category::TokenEmbd {
            // Only the IQ and TQ types change untied token embeddings.
            match ftype {
                F::IQ2XXS | F::IQ2XS | F::IQ1S | F::IQ1M => new_type = T::Q2K,
                F::IQ2S | F::IQ2M | F::IQ3XXS => new_type = T::IQ3S,
                _ => {}
            }
        } else if is_low_bit_iq(ftype) {
            new_type = self.choose_low_bit(new_type, ftype, cat);
        } else if is_attn_v(cat) {
            new_type = self.choose_attn_v(new_type, ftype);
        } else if cat == Category::AttnK || cat == Category::AttnQ {
            if cat == Category::AttnK && self.hp.n_expert == 8 {
                new_type = T::Q8_0;
            } else if ftype == F::IQ3XS {
                new_type = T::IQ3XXS;
            } else if ftype == F::IQ3XXS {
                new_type = T::IQ2S;
            }
        } else if cat == Category::FfnDown {
            new_type = self.choose_ffn_down(new_type, ftype);
        } else if cat == Category::AttnOutput {
            if self.hp.n_expert == 8 {
                if matches!(
                    ftype,
                    F::Q2K
                        | F::Q3KM
                        | F::Q4KS
                        | F::Q4KM
                        | F::IQ4NL
                        | F::IQ4XS
                        | F::IQ3XS
                        | F::IQ3XXS
                        | F::IQ3S
                        | F::IQ3M
                ) {
                    new_type = T::Q5K;
                }
            } else {
                match ftype {
                    F::Q2K => new_type = T::Q3K,
                    F::IQ3XXS => new_type = T::IQ3S,
                    F::Q3KM | F::IQ3M => new_type = T::Q4K,
                    _ => {}
                }
            }
        } else if cat == Category::AttnQkv {
            match ftype {
                F::Q3KM | F::IQ3M => new_type = T::Q4K,
                F::Q4KM => new_type = T::Q5K,
                F::Q5KM => new_type = T::Q6K,
                _ => {}
            }
        } else if cat == Category::FfnGate || cat == Category::FfnUp {
            let i_layer = if cat == Category::FfnGate {
                &mut self.i_ffn_gate
            } else {
                &mut self.i_ffn_up
            };
            let n_layer = self.hp.n_layer;
            if ftype == F::IQ3XS && *i_layer >= n_layer / 8 && *i_layer < 7 * n_layer / 8 {
                new_type = T::IQ3XXS;
            }
            *i_layer += 1;
        }
        new_type
    }

    /// The attention value projections outside the 1-/2-bit mixes.
    fn choose_attn_v(&mut self, mut new_type: GgmlType, ftype: FileType) -> GgmlType {
        use FileType as F;
        use GgmlType as T;
        let hp = self.hp;
        match ftype {
            F::Q2K => new_type = if hp.n_gqa >= 4 { T::Q4K } else { T::Q3K },
            F::IQ3XXS => {
                new_type = if hp.n_gqa >= 4 {
                    T::Q4K
                } else if !self.has_imatrix {
                    T::IQ3S
                } else {
                    T::IQ3XXS
                }
            }
            F::IQ3XS | F::IQ3S if hp.n_gqa >= 4 => new_type = T::Q4K,
            F::IQ3M => new_type = T::Q4K,
            F::Q3KM => {
                new_type = if self.i_attention_wv < 2 {
                    T::Q5K
                } else {
                    T::Q4K
                }
            }
            F::IQ4NL | F::IQ4XS if hp.n_gqa >= 4 => new_type = T::Q5K,
            F::Q4KM | F::Q5KM if use_more_bits(self.i_attention_wv, self.n_attention_wv) => {
                new_type = T::Q6K
            }
            F::Q4KS if self.i_attention_wv < 4 => new_type = T::Q5K,
            _ => {}
        }
        // llama.cpp's LLM_TYPE_70B: a Llama with 80 layers and GQA.
        if hp.n_layer == 80 && hp.n_gqa > 1 && (new_type == T::Q3K || new_type == T::Q4K) {
            new_type = T::Q5K;
        }
        if hp.n_expert == 8 {
            new_type = T::Q8_0;
        }
        self.i_attention_wv += 1;
        new_type
    }

    /// The feed-forward down projections outside the 1-/2-bit mixes.
    fn choose_ffn_down(&mut self, mut new_type: GgmlType, ftype: FileType) -> GgmlType {
        use FileType as F;
        use GgmlType as T;
        let (i_layer, n_layer) = (self.i_ffn_down, self.hp.n_layer);
        match ftype {
            F::Q2K => new_type = T::Q3K,
            F::IQ3XXS if !self.has_imatrix => {
                new_type = if i_layer < n_layer / 8 {
                    T::Q4K
                } else {
                    T::Q3K
                }
            }
            F::Q3KM => {
                // Not Falcon: use_more_bits is always taken.
                new_type = if i_layer < n_layer / 16 {
                    T::Q5K
                } else {
                    T::Q4K
                }
            }
            F::IQ3M
                if i_layer < n_layer / 8
                    || (self.hp.n_expert == 8 && use_more_bits(i_layer, n_layer)) =>
            {
                new_type = T::Q4K
            }
            F::Q4KM if use_more_bits(i_layer, n_layer) => new_type = T::Q6K,
            F::IQ4NL | F::IQ4XS if i_layer < n_layer / 8 && !self.has_imatrix => new_type = T::Q5K,
            F::Q5KM if use_more_bits(i_layer, n_layer) => new_type = T::Q6K,
            F::Q4KS if i_layer < n_layer / 8 => new_type = T::Q5K,
            F::Q4_0 if self.has_imatrix && i_layer < n_layer / 8 => new_type = T::Q4_1,
            F::Q5_0 if self.has_imatrix && i_layer < n_layer / 8 => new_type = T::Q5_1,
            _ => {}
        }
        self.i_ffn_down += 1;
        new_type
    }

    /// The 1- and 2-bit i-quant mixes (IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M,
    /// IQ1_S, IQ1_M): sensitive tensors get Q2_K/IQ3_S/Q4_K; the
    /// feed-forward gate and up counters do not advance.
    fn choose_low_bit(
        &mut self,
        mut new_type: GgmlType,
        ftype: FileType,
        cat: Category,
    ) -> GgmlType {
        use FileType as F;
        use GgmlType as T;
        let hp = self.hp;
        let iq2_sm = matches!(ftype, F::IQ2S | F::IQ2M);
        if is_attn_v(cat) {
            new_type = if hp.n_gqa >= 4 || hp.n_expert >= 4 {
                T::Q4K
            } else if iq2_sm {
                T::IQ3S
            } else {
                T::Q2K
            };
            self.i_attention_wv += 1;
        } else if hp.n_expert == 8 && cat == Category::AttnK {
            new_type = T::Q4K;
        } else if cat == Category::FfnDown {
            if self.i_ffn_down < hp.n_layer / 8 {
                new_type = if iq2_sm { T::IQ3S } else { T::Q2K };
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if hp.n_expert == 8 {
                new_type = T::Q5K;
            } else if matches!(ftype, F::IQ1S | F::IQ1M) {
                new_type = T::IQ2XXS;
            } else if iq2_sm {
                new_type = T::IQ3S;
            }
        }
        new_type
    }

    /// `llama_tensor_get_type`: `None` keeps the tensor's own type.
    fn choose(&mut self, name: &str, dims: &[u64], ftype: FileType) -> Option<GgmlType> {
        if !allows_quantization(name, dims) {
            return None;
        }
        let mut new_type = ftype.default_type();
        if ftype == FileType::IQ4XSM {
            new_type = iq4_xs_m_type(category(name), dims[0], self.has_tied_embeddings);
            new_type = fallback(name, dims[0], new_type);
        } else if new_type.is_quantized() {
            new_type = self.choose_impl(new_type, dims[0], ftype, category(name));
            new_type = fallback(name, dims[0], new_type);
        }
        Some(new_type)
    }
}

/// The type of a tensor of category `cat` with rows of `ncols` in
/// Spinel's `iq4_xs_m` mix. llama.cpp's iq4_xs gives the output layer (or
/// tied token embeddings) Q6_K, which on rows that do not fit 256-blocks
/// (SmolLM2's 576) falls back to Q8_0: a fifth of a small model's bytes at
/// 8.5 bits per weight. Here that tensor gets 5 bits (Q5_K, or its
/// fallback Q5_1), and the bytes saved go to the layers: Q8_0
/// attention values, 5-bit attention q/k/output and ffn_down. On
/// SmolLM2-135M, with the same importance matrix, the file is 0.14 MB
/// smaller than llama.cpp's iq4_xs + imatrix and its KL divergence from
/// the f32 model 0.062 against 0.108 (benches/quality/quality.sh, 8
/// chunks); 0.053 with the output layer's importance for the tied
/// embeddings (`spinel imatrix --process-output`, [`imatrix_name`]). Measured alternatives at the same size did no better: Q5_0
/// embeddings (0.075 with the bytes left unspent), 4.5-bit embeddings with
/// every layer at 5 bits (0.142), Q5_0 attention values with 5-bit gate/up
/// in the first and last layers (0.073).
fn iq4_xs_m_type(cat: Category, ncols: u64, tied_embeddings: bool) -> GgmlType {
    use GgmlType as T;
    // Q5_K where its 256-blocks fit the rows, else Q5_0 (5.5 bpw both;
    // llama.cpp's own fallback of Q5_K is the 6-bpw Q5_1).
    let five = if ncols % blck(T::Q5K) == 0 {
        T::Q5K
    } else {
        T::Q5_0
    };
    match cat {
        // The output layer is the most sensitive: Q5_K, whose fallback is
        // the 6-bpw Q5_1 (on SmolLM2 the file's KLD is 0.062 with it,
        // 0.075 with Q5_0).
        Category::Output => T::Q5K,
        Category::TokenEmbd if tied_embeddings => T::Q5K,
        Category::AttnV | Category::AttnKvB => T::Q8_0,
        Category::AttnQkv
        | Category::AttnQ
        | Category::AttnK
        | Category::AttnOutput
        | Category::FfnDown => five,
        // Untied token embeddings are only looked up (llama.cpp's iq4_xs
        // keeps them at the default type too); gate and up at IQ4_XS.
        Category::TokenEmbd | Category::FfnUp | Category::FfnGate | Category::Other => T::IQ4XS,
    }
}

/// `tensor_type_fallback`: a type whose block fits the row length.
fn fallback(_name: &str, ncols: u64, target: GgmlType) -> GgmlType {
    use GgmlType as T;
    if ncols % blck(target) == 0 {
        return target;
    }
    let mut t = match target {
        T::IQ1S | T::IQ1M | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ3XXS | T::IQ3S | T::IQ4XS => {
            T::IQ4NL
        }
        T::Q2K | T::Q3K => T::Q4_0,
        T::Q4K => T::Q5_0,
        T::Q5K => T::Q5_1,
        T::Q6K => T::Q8_0,
        other => other,
    };
    if ncols % blck(t) != 0 {
        t = T::F16;
    }
    t
}

/// The layer of a `blk.N.` tensor, -1 for the others.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// The order llama.cpp's model loader keeps tensors in (and llama-quantize
/// processes and writes them in): by layer (non-layer tensors first), then
/// by name. Indices into `file.tensors()`.
pub fn llama_order(file: &GgufFile<'_>) -> Vec<usize> {
    let t = file.tensors();
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (t[a].name(), t[b].name());
        (layer_of(a), a).cmp(&(layer_of(b), b))
    });
    order
}

/// The type every tensor of `file` gets for `ftype` (in file order), as
/// llama-quantize chooses it with or without an importance matrix.
pub fn plan_types(file: &GgufFile<'_>, ftype: FileType, has_imatrix: bool) -> Vec<GgmlType> {
    let md = file.metadata();
    let arch = md.get_str("general.architecture").unwrap_or("llama");
    let key = |k: &str| format!("{arch}.{k}");
    let n_layer = md.get_uint(&key("block_count")).unwrap_or(0) as i64;
    let n_head = md.get_uint(&key("attention.head_count")).unwrap_or(1) as i64;
    let n_head_kv = md
        .get_uint(&key("attention.head_count_kv"))
        .map_or(n_head, |v| v as i64);
    let n_expert = md.get_uint(&key("expert_count")).unwrap_or(0) as i64;
    let mut st = State {
        hp: Hparams {
            n_layer,
            n_gqa: if n_head_kv > 0 { n_head / n_head_kv } else { 1 },
            n_expert,
        },
        n_attention_wv: 0,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        has_tied_embeddings: true,
        has_imatrix,
    };
    for t in file.tensors() {
        let c = category(t.name());
        if is_attn_v(c) {
            st.n_attention_wv += 1;
        }
        if c == Category::Output {
            st.has_tied_embeddings = false;
        }
    }
    let tensors = file.tensors();
    let mut types: Vec<GgmlType> = tensors.iter().map(|t| t.ggml_type()).collect();
    for i in llama_order(file) {
        let t = &tensors[i];
        if let Some(ty) = st.choose(t.name(), t.dims(), ftype) {
            types[i] = ty;
        }
    }
    types
}

/// llama-quantize's `tensor_requires_imatrix`: quantizing tensor `name` to
/// `ty` needs an importance matrix (the token embeddings and the output
/// layer never do).
pub fn tensor_requires_imatrix(name: &str, ty: GgmlType) -> bool {
    use GgmlType as T;
    let embd_or_output = matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    );
    !embd_or_output
        && matches!(
            ty,
            T::IQ3XXS | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ1M | T::IQ1S
        )
}

/// A tensor finished (for progress reports).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub index: usize,
    pub count: usize,
    pub name: &'a str,
    pub from: GgmlType,
    pub to: GgmlType,
    /// Elements of the tensors done so far (this one included), and in all.
    pub elems_done: u64,
    pub elems_total: u64,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The file size in bytes.
    pub file_bytes: u64,
    /// Bytes of tensor data before and after.
    pub data_bytes_in: u64,
    pub data_bytes_out: u64,
    /// Weights (elements of all tensors).
    pub n_elements: u64,
    /// Quantized tensors that had to be dequantized (requantization).
    pub requantized: usize,
    /// How many tensors ended up with each type.
    pub type_counts: Vec<(GgmlType, usize)>,
}

impl Summary {
    /// Bits per weight of the tensor data.
    pub fn bits_per_weight(&self) -> f64 {
        self.data_bytes_out as f64 * 8.0 / self.n_elements.max(1) as f64
    }
}

/// Errors of [`quantize_file`].
#[derive(Debug)]
pub enum QuantizeError {
    Gguf(GgufError),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--rotate` cannot rotate this model (the message says why).
    Rotate(String),
    /// The file type needs an importance matrix for this tensor, as in
    /// llama-quantize (ggml's quantizer of the type would refuse).
    NeedsImatrix {
        ftype: FileType,
        tensor: String,
        ty: GgmlType,
    },
    /// The importance matrix does not fit the model (the message says why).
    Imatrix(String),
    /// The file is an mmproj (a vision tower) and the type is not one of
    /// [`mmproj::MMPROJ_TYPES`].
    MmprojType(FileType),
    /// Quantizing one tensor failed (the importance weights do not fit it).
    Tensor {
        tensor: String,
        source: spinel_quant::formats::iq_grid::QuantizeError,
    },
}

impl fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantizeError::Gguf(e) => e.fmt(f),
            QuantizeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            QuantizeError::Rotate(m) => write!(f, "cannot rotate: {m}"),
            QuantizeError::NeedsImatrix { ftype, tensor, ty } => write!(
                f,
                "{ftype} requires an importance matrix: {tensor} would be {ty}, which ggml \
                 only quantizes with one (as llama-quantize, Spinel refuses; \
                 iq3_s, iq3_m and the k-quants work without)"
            ),
            QuantizeError::Imatrix(m) => write!(f, "importance matrix: {m}"),
            QuantizeError::MmprojType(t) => {
                let ok: Vec<_> = mmproj::MMPROJ_TYPES.iter().map(|t| t.name()).collect();
                write!(
                    f,
                    "this is an mmproj file (a vision tower), which is kept at f16 or q8_0 \
                     as llama.cpp keeps it: --type {t} is not supported for it (one of {})",
                    ok.join(", ")
                )
            }
            QuantizeError::Tensor { tensor, source } => write!(f, "{tensor}: {source}"),
        }
    }
}

impl std::error::Error for QuantizeError {}

impl From<GgufError> for QuantizeError {
    fn from(e: GgufError) -> Self {
        QuantizeError::Gguf(e)
    }
}

/// Importance weights for one tensor: one per column of each matrix
/// (`rows_per_matrix` rows each; more than one matrix for stacked experts).
#[derive(Clone, Copy, Debug)]
pub struct TensorWeights<'a> {
    pub weights: &'a [f32],
    pub rows_per_matrix: usize,
}

/// Converts one tensor's data from `from` to `to` (row by row, over
/// `threads` threads), quantizing as ggml's `ggml_quantize_chunk` does:
/// with the tensor's importance `weights` if given (the weighted algorithm
/// of each type; types without one ignore them).
pub fn convert_tensor(
    data: &[u8],
    row_len: usize,
    from: GgmlType,
    to: GgmlType,
    threads: usize,
    weights: Option<TensorWeights<'_>>,
) -> Result<Vec<u8>, spinel_quant::formats::iq_grid::QuantizeError> {
    use spinel_quant::formats::iq_grid::{QuantizeError as E, quantize_weighted, requires_imatrix};
    if from == to {
        return Ok(data.to_vec());
    }
    let in_row = from.row_size(row_len).expect("valid row");
    let n_rows = data.len() / in_row;
    match weights {
        Some(w) => {
            let n_mat = n_rows.div_ceil(w.rows_per_matrix.max(1)).max(1);
            if w.weights.len() != row_len * n_mat {
                return Err(E::WeightsLength {
                    expected: row_len * n_mat,
                    got: w.weights.len(),
                });
            }
        }
        None if requires_imatrix(to) => return Err(E::NeedsImatrix),
        None => {}
    }
    let to_float = Kernels::get().of(from).to_float;
    let out_row = to
        .row_size(row_len)
        .expect("row length fits the chosen type");
    let mut out = vec![0u8; n_rows * out_row];
    let work = |first_row: usize, src: &[u8], dst: &mut [u8]| -> Result<(), E> {
        let mut tmp = vec![0f32; row_len];
        let rows = src.chunks_exact(in_row).zip(dst.chunks_exact_mut(out_row));
        for (i, (s, d)) in rows.enumerate() {
            to_float(s, &mut tmp);
            let qw = weights.map(|w| {
                let m = (first_row + i) / w.rows_per_matrix.max(1);
                &w.weights[m * row_len..(m + 1) * row_len]
            });
            quantize_weighted(to, &tmp, d, qw)?;
        }
        Ok(())
    };
    let threads = threads.max(1).min(n_rows.max(1));
    if threads == 1 || n_rows * row_len < 1 << 15 {
        work(0, data, &mut out)?;
        return Ok(out);
    }
    let per = n_rows.div_ceil(threads);
    std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = data
            .chunks(per * in_row)
            .zip(out.chunks_mut(per * out_row))
            .enumerate()
            .map(|(i, (src, dst))| s.spawn(move || work(i * per, src, dst)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("quantization thread panicked"))
    })?;
    Ok(out)
}

/// The Spinel preset a file was quantized with, where `general.file_type`
/// cannot say it (`w4a8`).
pub const PRESET_KEY: &str = "spinel.quantize.preset";

/// The metadata keys llama-quantize drops.
const DROPPED_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// An importance matrix as [`quantize_file`] uses it.
#[derive(Clone, Copy, Debug)]
pub struct ImatrixUse<'a> {
    /// Per weight name, one importance per column (per expert for stacked
    /// experts): [`crate::imatrix::Imatrix::quant_weights`].
    pub weights: &'a HashMap<String, Vec<f32>>,
    /// Recorded as `quantize.imatrix.file` (llama-quantize records the path
    /// as it was given).
    pub file: &'a str,
    /// The first dataset, recorded as `quantize.imatrix.dataset`.
    pub dataset: Option<&'a str>,
    /// Recorded as `quantize.imatrix.chunks_count` when positive.
    pub chunk_count: u32,
}

/// The metadata llama-quantize records about an importance matrix.
const KEY_IMATRIX_FILE: &str = "quantize.imatrix.file";
const KEY_IMATRIX_DATASET: &str = "quantize.imatrix.dataset";
const KEY_IMATRIX_ENTRIES: &str = "quantize.imatrix.entries_count";
const KEY_IMATRIX_CHUNKS: &str = "quantize.imatrix.chunks_count";

/// llama-quantize copies override strings into a 128-byte buffer.
fn truncate_127(s: &str) -> &str {
    let mut end = s.len().min(127);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The metadata of the output: the input's, `general.quantization_version`
/// and `general.file_type` set, then the importance-matrix keys (each set
/// key removed and appended, as `gguf_set_val_*` does).
fn output_metadata<'a>(
    input: &GgufFile<'a>,
    ftype: FileType,
    imatrix: Option<&ImatrixUse<'_>>,
) -> Result<GgufWriter<'a>, QuantizeError> {
    const QV: &str = "general.quantization_version";
    const FT: &str = "general.file_type";
    let mut set: Vec<(&str, Value<'a>)> = vec![(QV, Value::U32(2)), (FT, Value::U32(ftype.id()))];
    if matches!(ftype, FileType::W4A8 | FileType::IQ4XSM) {
        set.push((PRESET_KEY, Value::String(ftype.name().into())));
    }
    if let Some(im) = imatrix {
        set.push((
            KEY_IMATRIX_FILE,
            Value::String(truncate_127(im.file).to_string().into()),
        ));
        if let Some(d) = im.dataset {
            set.push((
                KEY_IMATRIX_DATASET,
                Value::String(truncate_127(d).to_string().into()),
            ));
        }
        set.push((KEY_IMATRIX_ENTRIES, Value::U32(im.weights.len() as u32)));
        if im.chunk_count > 0 {
            set.push((KEY_IMATRIX_CHUNKS, Value::U32(im.chunk_count)));
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in input.metadata().iter() {
        let replaced = set.iter().any(|(s, _)| *s == k);
        if !DROPPED_KEYS.contains(&k) && !replaced && k != PRESET_KEY {
            w.add_kv(k, v.clone())?;
        }
    }
    for (k, v) in set {
        w.add_kv(k, v)?;
    }
    Ok(w)
}

/// The metadata of a quantized mmproj: the input's unchanged but for
/// `general.file_type`, which says what the weights now are (llama.cpp's
/// converter writes it into mmproj files too).
fn mmproj_metadata<'a>(
    input: &GgufFile<'a>,
    ftype: FileType,
) -> Result<GgufWriter<'a>, QuantizeError> {
    const FT: &str = "general.file_type";
    let mut w = GgufWriter::new();
    let mut seen = false;
    for (k, v) in input.metadata().iter() {
        if k == FT {
            seen = true;
            w.add_kv(k, Value::U32(ftype.id()))?;
        } else {
            w.add_kv(k, v.clone())?;
        }
    }
    if !seen {
        w.add_kv(FT, Value::U32(ftype.id()))?;
    }
    Ok(w)
}

/// The importance-matrix entry tensor `name` is quantized with: its own,
/// but for `iq4_xs_m`, tied token embeddings take the output layer's
/// (`spinel imatrix --process-output`), as the embeddings are that layer
/// too (on SmolLM2-135M: KL divergence 0.053 against 0.062 without). A
/// matrix without that entry leaves them unweighted, as before.
fn imatrix_name(name: &str, ftype: FileType, tied: bool) -> &str {
    if ftype == FileType::IQ4XSM && tied && name == "token_embd.weight" {
        "output.weight"
    } else {
        name
    }
}

/// The importance weights of tensor `t`, as llama-quantize looks them up:
/// none when the matrix has no entry; an entry of the wrong size is an
/// error (but for the token embeddings, which then go without).
fn tensor_weights<'w>(
    imatrix: Option<&ImatrixUse<'w>>,
    name: &str,
    dims: &[u64],
) -> Result<Option<TensorWeights<'w>>, QuantizeError> {
    let Some(w) = imatrix.and_then(|im| im.weights.get(name)) else {
        return Ok(None);
    };
    if dims.get(3).is_some_and(|&d| d > 1) {
        return Err(QuantizeError::Imatrix(format!(
            "{name}: importance weights for a 4-dimensional tensor"
        )));
    }
    let n_mat = dims.get(2).copied().unwrap_or(1);
    let want = dims.first().copied().unwrap_or(1).saturating_mul(n_mat);
    if w.len() as u64 != want {
        if category(name) == Category::TokenEmbd {
            return Ok(None);
        }
        return Err(QuantizeError::Imatrix(format!(
            "{} values for {name}, which needs {want}",
            w.len()
        )));
    }
    Ok(Some(TensorWeights {
        weights: w,
        rows_per_matrix: dims.get(1).copied().unwrap_or(1) as usize,
    }))
}

/// Quantizes `input` to `out` (written through `out.part`, renamed at the
/// end), tensors in llama-quantize's order. The metadata is copied,
/// `general.quantization_version` and `general.file_type` set as
/// llama-quantize sets them. With an importance matrix, as
/// `llama-quantize --imatrix`: weighted quantizers, a few imatrix-dependent
/// type choices, and the `quantize.imatrix.*` metadata; without one, the
/// types that need one are refused.
pub fn quantize_file(
    input: &GgufFile<'_>,
    out: &Path,
    ftype: FileType,
    threads: usize,
    imatrix: Option<&ImatrixUse<'_>>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Summary, QuantizeError> {
    let imatrix = imatrix.filter(|im| !im.weights.is_empty());
    if let Some(im) = imatrix {
        for (name, w) in im.weights {
            if let Some(v) = w.iter().find(|v| !v.is_finite()) {
                return Err(QuantizeError::Imatrix(format!(
                    "{name}: non-finite value {v}"
                )));
            }
        }
    }
    let vision = mmproj::is_mmproj(input);
    if vision && !mmproj::MMPROJ_TYPES.contains(&ftype) {
        return Err(QuantizeError::MmprojType(ftype));
    }
    let types = if vision {
        mmproj::plan_mmproj_types(input, ftype)
    } else {
        plan_types(input, ftype, imatrix.is_some())
    };
    if imatrix.is_none() && !vision {
        for (t, &ty) in input.tensors().iter().zip(&types) {
            if allows_quantization(t.name(), t.dims()) && tensor_requires_imatrix(t.name(), ty) {
                return Err(QuantizeError::NeedsImatrix {
                    ftype,
                    tensor: t.name().to_owned(),
                    ty,
                });
            }
        }
    }
    let mut w = if vision {
        mmproj_metadata(input, ftype)?
    } else {
        output_metadata(input, ftype, imatrix)?
    };

    let tied = !input.tensors().iter().any(|t| t.name() == "output.weight");
    // An mmproj keeps its own order (llama.cpp's loader of the text model
    // sorts; clip's does not care).
    let order = if vision {
        (0..input.tensors().len()).collect()
    } else {
        llama_order(input)
    };
    let tensors: Vec<_> = order.iter().map(|&i| input.tensors()[i].clone()).collect();
    let types: Vec<GgmlType> = order.iter().map(|&i| types[i]).collect();
    let elems_total: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let mut elems_done = 0;
    let mut datas = Vec::with_capacity(tensors.len());
    let mut requantized = 0;
    let mut data_bytes_in = 0u64;
    let mut data_bytes_out = 0u64;
    for (i, (t, &to)) in tensors.iter().zip(&types).enumerate() {
        let from = t.ggml_type();
        if from != to && from.is_quantized() {
            requantized += 1;
        }
        let row_len = t.dims().first().copied().unwrap_or(1) as usize;
        let weights = if from != to {
            tensor_weights(imatrix, imatrix_name(t.name(), ftype, tied), t.dims())?
        } else {
            None
        };
        let data =
            convert_tensor(t.data(), row_len, from, to, threads, weights).map_err(|source| {
                QuantizeError::Tensor {
                    tensor: t.name().to_owned(),
                    source,
                }
            })?;
        data_bytes_in += t.size() as u64;
        data_bytes_out += data.len() as u64;
        elems_done += t.n_elements();
        progress(Progress {
            index: i,
            count: tensors.len(),
            name: t.name(),
            from,
            to,
            elems_done,
            elems_total,
        });
        datas.push(data);
    }
    for ((t, &to), data) in tensors.iter().zip(&types).zip(&datas) {
        w.add_tensor(t.name(), t.dims(), to, data.as_slice())?;
    }
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let part = out.with_file_name(name);
    if let Err(e) = w.write_file(&part) {
        let _ = std::fs::remove_file(&part);
        return Err(e.into());
    }
    std::fs::rename(&part, out).map_err(|source| QuantizeError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let file_bytes = std::fs::metadata(out)
        .map_err(|source| QuantizeError::Io {
            path: out.to_path_buf(),
            source,
        })?
        .len();
    let mut type_counts: Vec<(GgmlType, usize)> = Vec::new();
    for &t in &types {
        match type_counts.iter_mut().find(|(ty, _)| *ty == t) {
            Some((_, n)) => *n += 1,
            None => type_counts.push((t, 1)),
        }
    }
    Ok(Summary {
        file_bytes,
        data_bytes_in,
        data_bytes_out,
        n_elements: elems_total,
        requantized,
        type_counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in FileType::ALL {
            assert_eq!(FileType::from_name(t.name()), Some(t));
            assert_eq!(FileType::from_name(&t.name().to_uppercase()), Some(t));
        }
    }

    #[test]
    fn fallbacks_for_576_columns() {
        assert_eq!(fallback("x", 576, GgmlType::Q4K), GgmlType::Q5_0);
        assert_eq!(fallback("x", 576, GgmlType::Q5K), GgmlType::Q5_1);
        assert_eq!(fallback("x", 576, GgmlType::Q6K), GgmlType::Q8_0);
        assert_eq!(fallback("x", 576, GgmlType::Q2K), GgmlType::Q4_0);
        assert_eq!(fallback("x", 1536, GgmlType::Q4K), GgmlType::Q4K);
        assert_eq!(fallback("x", 40, GgmlType::Q4_0), GgmlType::F16);
    }

    #[test]
    fn iquant_fallbacks_for_576_columns() {
        // llama.cpp's tensor_type_fallback: every i-quant of 256 falls
        // back to IQ4_NL, and 40 columns fit no block type.
        for t in [
            GgmlType::IQ1S,
            GgmlType::IQ1M,
            GgmlType::IQ2XXS,
            GgmlType::IQ2XS,
            GgmlType::IQ2S,
            GgmlType::IQ3XXS,
            GgmlType::IQ3S,
        ] {
            assert_eq!(fallback("x", 576, t), GgmlType::IQ4NL, "{t}");
            assert_eq!(fallback("x", 1536, t), t, "{t}");
            assert_eq!(fallback("x", 40, t), GgmlType::F16, "{t}");
        }
    }

    #[test]
    fn imatrix_requirement_follows_llama_quantize() {
        for t in [
            GgmlType::IQ3XXS,
            GgmlType::IQ2S,
            GgmlType::IQ1M,
            GgmlType::IQ1S,
        ] {
            assert!(tensor_requires_imatrix("blk.0.attn_q.weight", t), "{t}");
            assert!(!tensor_requires_imatrix("token_embd.weight", t), "{t}");
            assert!(!tensor_requires_imatrix("output.weight", t), "{t}");
        }
        assert!(!tensor_requires_imatrix(
            "blk.0.attn_q.weight",
            GgmlType::IQ3S
        ));
        assert!(!tensor_requires_imatrix(
            "blk.0.attn_q.weight",
            GgmlType::Q2K
        ));
    }

    #[test]
    fn iq4_xs_m_types() {
        use Category as C;
        use GgmlType as T;
        let ty = |name: &str, ncols: u64, tied: bool| {
            fallback(name, ncols, iq4_xs_m_type(category(name), ncols, tied))
        };
        // SmolLM2: 576-wide rows but ffn_down's 1536; tied embeddings.
        assert_eq!(ty("token_embd.weight", 576, true), T::Q5_1);
        assert_eq!(ty("blk.3.attn_v.weight", 576, true), T::Q8_0);
        for n in ["attn_q", "attn_k", "attn_output"] {
            assert_eq!(ty(&format!("blk.0.{n}.weight"), 576, true), T::Q5_0, "{n}");
        }
        assert_eq!(ty("blk.0.ffn_down.weight", 1536, true), T::Q5K);
        assert_eq!(ty("blk.0.ffn_gate.weight", 576, true), T::IQ4NL);
        assert_eq!(ty("blk.0.ffn_up.weight", 576, true), T::IQ4NL);
        // Rows of 4096 (Llama 3 8B): the 256-block types themselves.
        assert_eq!(ty("output.weight", 4096, false), T::Q5K);
        assert_eq!(ty("token_embd.weight", 4096, false), T::IQ4XS);
        assert_eq!(ty("blk.0.attn_q.weight", 4096, false), T::Q5K);
        assert_eq!(ty("blk.0.ffn_up.weight", 4096, false), T::IQ4XS);
        assert_eq!(iq4_xs_m_type(C::AttnV, 4096, false), T::Q8_0);
    }

    #[test]
    fn more_bits_layers() {
        // 30 layers (SmolLM2-135M): llama.cpp's use_more_bits.
        let more: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }
}
