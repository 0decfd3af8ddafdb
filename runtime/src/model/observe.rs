//! An optional observer of the f32 activations entering each matrix
//! product of the forward pass (what `spinel imatrix` sums), called with
//! the rows as the product reads them (after the norm, before they are
//! converted to the weights' activation type). A state without one pays a
//! branch per product.

use std::fmt;

/// Which products of layer `layer` read an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulSite {
    /// `attn_q`, `attn_k` and `attn_v` (one input).
    AttnQkv,
    AttnOutput,
    /// `ffn_gate` and `ffn_up`.
    FfnGateUp,
    FfnDown,
    /// The MoE router (`ffn_gate_inp`).
    Router,
    /// The shared expert's gate and up.
    SharedGateUp,
    SharedDown,
    /// Expert `e` of `ffn_gate_exps` / `ffn_up_exps`.
    ExpertsGateUp(usize),
    /// Expert `e` of `ffn_down_exps`.
    ExpertsDown(usize),
    /// The output layer (the normalized final residual).
    Output,
}

impl MatmulSite {
    /// The GGUF names of the weights that read the input (without the
    /// `blk.N.` prefix and `.weight` suffix).
    pub fn weights(self) -> &'static [&'static str] {
        match self {
            MatmulSite::AttnQkv => &["attn_q", "attn_k", "attn_v"],
            MatmulSite::AttnOutput => &["attn_output"],
            MatmulSite::FfnGateUp => &["ffn_gate", "ffn_up"],
            MatmulSite::FfnDown => &["ffn_down"],
            MatmulSite::Router => &["ffn_gate_inp"],
            MatmulSite::SharedGateUp => &["ffn_gate_shexp", "ffn_up_shexp"],
            MatmulSite::SharedDown => &["ffn_down_shexp"],
            MatmulSite::ExpertsGateUp(_) => &["ffn_gate_exps", "ffn_up_exps"],
            MatmulSite::ExpertsDown(_) => &["ffn_down_exps"],
            MatmulSite::Output => &["output"],
        }
    }

    /// The expert, for a stacked experts' weight.
    pub fn expert(self) -> Option<usize> {
        match self {
            MatmulSite::ExpertsGateUp(e) | MatmulSite::ExpertsDown(e) => Some(e),
            _ => None,
        }
    }
}

/// Receives the inputs of the forward pass's matrix products.
pub trait ActivationObserver: Send + Sync {
    /// `x`: the `n` rows (`x.len() / n` columns each) read by the products
    /// at `site` of layer `layer`.
    fn observe(&mut self, layer: usize, site: MatmulSite, x: &[f32], n: usize);
}

/// The state's observer slot.
#[derive(Default)]
pub(crate) struct Observer(pub Option<Box<dyn ActivationObserver>>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(Some)"
        } else {
            "Observer(None)"
        })
    }
}

impl Observer {
    /// Passes the first `n` rows of `x` (`cols` wide) on, if observed.
    #[inline]
    pub fn see(&mut self, layer: usize, site: MatmulSite, x: &[f32], n: usize, cols: usize) {
        if let Some(o) = self.0.as_deref_mut() {
            o.observe(layer, site, &x[..n * cols], n);
        }
    }
}
