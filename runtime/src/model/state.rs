//! Everything that changes while a model runs: the KV cache and the
//! activation buffers, all allocated once when the state is created.

use spinel_quant::{GgmlType, Hadamard};

use super::attention;
use super::config::Config;
use super::error::ModelError;
use super::matmul::Matmul;
use super::ops::AlignedBuf;
use super::pool::Pool;

/// The element type of the K or V cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Exact; what reference-accuracy tests need.
    F32,
    /// Half the memory of F32 (llama.cpp's default); costs ~1e-3 in logits.
    #[default]
    F16,
    /// Q8_0 blocks, 8.5 bits a value (needs a head size that is a multiple
    /// of 32).
    Q8_0,
    /// Q4_0 blocks, 4.5 bits a value (needs a head size that is a multiple
    /// of 32).
    Q4_0,
}

impl KvType {
    /// Every type, in the order [`KvType::NAMES`] lists them.
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];
    /// The names [`from_name`](KvType::from_name) takes, for messages.
    pub const NAMES: &'static str = "f32, f16, q8_0, q4_0";

    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Parses `f32`, `f16`, `q8_0` or `q4_0` (any case).
    pub fn from_name(name: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.ggml_type().name().eq_ignore_ascii_case(name))
    }
}

/// How a state is sized.
#[derive(Clone, Debug)]
pub struct StateOptions {
    /// Context length; `None`: the model's training context, capped at
    /// [`DEFAULT_MAX_CTX`].
    pub n_ctx: Option<usize>,
    /// The K cache type, and the V cache type unless `kv_type_v` is set.
    pub kv_type: KvType,
    /// The V cache type when it differs from the K cache's
    /// (llama.cpp's `-ctk`/`-ctv`).
    pub kv_type_v: Option<KvType>,
    /// Most prompt tokens pushed through the layers together (512 by
    /// default, like llama.cpp's micro-batch).
    pub n_batch: usize,
    /// Threads for matrix products and attention; `None`: all cores.
    pub n_threads: Option<usize>,
    /// Hadamard rotations around the KV cache, which attention does not
    /// see but a quantized cache loses much less with:
    /// - R3, every query and key head after RoPE (it cancels in `q·k`):
    ///   q4_0 keys on SmolLM2 go from a KLD of 0.135 to 0.033;
    /// - every value head before it is stored, and each head of the
    ///   attention output back (`Σ pᵢ H vᵢ = H Σ pᵢ vᵢ`).
    ///
    /// `None`: as llama.cpp does, q/k when the K cache is quantized (or the
    /// file asks for R3, `spinel quantize --rotate-online`) and v when the V
    /// cache is, where the head size has a transform; `Some(false)`: none;
    /// `Some(true)`: both (an error without a transform).
    pub kv_rotation: Option<bool>,
}

impl StateOptions {
    /// The K and V cache types.
    pub fn kv_types(&self) -> (KvType, KvType) {
        (self.kv_type, self.kv_type_v.unwrap_or(self.kv_type))
    }
}

/// The context length used when none is asked for and the model was trained
/// for more.
pub const DEFAULT_MAX_CTX: usize = 4096;

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            n_ctx: None,
            kv_type: KvType::default(),
            kv_type_v: None,
            n_batch: 512,
            n_threads: None,
            kv_rotation: None,
        }
    }
}

/// The sizes a state is allocated for, derived from the model; a state only
/// runs with a model of the same layout.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Layout {
    pub config: Config,
    /// Widest activation row (bytes) in any weight's `vec_dot_type`.
    pub max_act_row_bytes: usize,
    /// Widest feed-forward hidden layer (dense, expert or shared).
    pub max_ff: usize,
}

/// Keys and values of every layer for positions `0..n_ctx`, allocated once.
#[derive(Debug)]
pub(crate) struct KvCache {
    /// The key type.
    pub k_ty: GgmlType,
    /// The value type.
    pub v_ty: GgmlType,
    pub n_ctx: usize,
    pub index: KvIndex,
    /// `(layer, kv_head, position, head_dim)` in `k_ty`.
    pub k: AlignedBuf,
    /// `(layer, kv_head, head_dim, position)` in `v_ty` (transposed, so
    /// that attention reads `Vᵀ` rows) when `v_ty` has one element per
    /// block; `(layer, kv_head, position, head_dim)` otherwise (Q8_0, Q4_0).
    pub v: AlignedBuf,
}

/// Where things are in a [`KvCache`] (a copy, usable while the cache's
/// bytes are borrowed for writing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvIndex {
    n_ctx: usize,
    n_head_kv: usize,
    head_dim: usize,
    /// Bytes of one head's key at one position.
    pub k_row_bytes: usize,
    /// Bytes of one head's value at one position.
    pub v_row_bytes: usize,
    /// Bytes of one element of a transposed `v`.
    v_elem_bytes: usize,
    /// Whether `v` holds `Vᵀ`.
    pub v_transposed: bool,
}

impl KvIndex {
    /// Byte offset of the key row of `(layer, head, pos)`.
    pub fn k_offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_head_kv + head) * self.n_ctx + pos) * self.k_row_bytes
    }

    /// Byte offset of the value row of `(layer, head, pos)` where values
    /// are not transposed.
    pub fn v_offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_head_kv + head) * self.n_ctx + pos) * self.v_row_bytes
    }

    /// Byte offset of element `(layer, head, d, pos)` of a transposed `v`.
    pub fn vt_offset(&self, layer: usize, head: usize, d: usize, pos: usize) -> usize {
        (((layer * self.n_head_kv + head) * self.head_dim + d) * self.n_ctx + pos)
            * self.v_elem_bytes
    }
}

impl KvCache {
    /// A zeroed cache with keys of `k_ty` and values of `v_ty` for
    /// `n_layer` layers of `n_head_kv` heads of `head_dim`, positions
    /// `0..n_ctx`.
    pub fn new(
        k_ty: GgmlType,
        v_ty: GgmlType,
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        n_ctx: usize,
    ) -> Result<KvCache, ModelError> {
        let bad = |what, value| ModelError::BadStateSize { what, value };
        let row = |which, ty: GgmlType| {
            ty.row_size(head_dim)
                .filter(|_| head_dim > 0)
                .ok_or(ModelError::KvCacheHeadSize {
                    which,
                    ty,
                    head_dim,
                })
        };
        let (k_row_bytes, v_row_bytes) = (row("K", k_ty)?, row("V", v_ty)?);
        let bytes = |row_bytes: usize| {
            [n_layer, n_head_kv, n_ctx, row_bytes]
                .into_iter()
                .try_fold(1usize, |a, b| a.checked_mul(b))
                .filter(|&b| b <= isize::MAX as usize / 2)
                .ok_or(bad("context length", n_ctx))
        };
        let (k_bytes, v_bytes) = (bytes(k_row_bytes)?, bytes(v_row_bytes)?);
        Ok(KvCache {
            k_ty,
            v_ty,
            n_ctx,
            index: KvIndex {
                n_ctx,
                n_head_kv,
                head_dim,
                k_row_bytes,
                v_row_bytes,
                v_elem_bytes: v_ty.type_size(),
                v_transposed: v_ty.block_size() == 1,
            },
            k: AlignedBuf::zeroed(k_bytes),
            v: AlignedBuf::zeroed(v_bytes),
        })
    }

    pub fn k_offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        self.index.k_offset(layer, head, pos)
    }

    pub fn v_offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        self.index.v_offset(layer, head, pos)
    }

    pub fn v_transposed(&self) -> bool {
        self.index.v_transposed
    }

    pub fn vt_offset(&self, layer: usize, head: usize, d: usize, pos: usize) -> usize {
        self.index.vt_offset(layer, head, d, pos)
    }
}

/// One token's choice of one expert.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub token: usize,
    pub expert: usize,
    /// The sigmoid router score that scales the expert's input.
    pub weight: f32,
}

/// The running state of one sequence: the KV cache, the position, and
/// every activation buffer of the forward pass.
///
/// Created by [`Model::new_state`](super::Model::new_state); nothing is
/// allocated while it runs. Each call to [`Model::forward`](super::Model::forward)
/// continues at [`n_past`](State::n_past), so a conversation only feeds the
/// new tokens of each turn.
#[derive(Debug)]
pub struct State {
    pub(crate) layout: Layout,
    /// What the state was made with (its context length resolved), to
    /// make it again after [`release`](State::release).
    opts: StateOptions,
    /// The buffers were given back; the next use allocates them again.
    released: bool,
    /// R3: queries and keys go through a Hadamard transform after RoPE
    /// (see [`StateOptions::kv_rotation`]).
    pub(crate) rotate_qk: bool,
    /// Values go through it before the cache, attention outputs back.
    pub(crate) rotate_v: bool,
    pub(crate) n_past: usize,
    pub(crate) n_batch: usize,
    pub(crate) kv: KvCache,

    /// `(n_batch, dim)`: the residual stream.
    pub(crate) x: Vec<f32>,
    /// `(n_batch, dim)`: the normalized input of a block.
    pub(crate) xb: Vec<f32>,
    /// `(n_batch, n_head · head_dim)`: queries.
    pub(crate) q: Vec<f32>,
    /// `(n_batch, n_head_kv · head_dim)`: keys of the batch.
    pub(crate) k: Vec<f32>,
    /// `(n_batch, n_head_kv · head_dim)`: values of the batch.
    pub(crate) v: Vec<f32>,
    /// `(n_batch, n_head · head_dim)`: attention output, heads side by side.
    pub(crate) att_out: Vec<f32>,
    /// `(n_batch, max_ff)`: the feed-forward hidden layer, `silu(gate) · up`.
    pub(crate) hb: Vec<f32>,
    /// `(n_batch, head_dim)`: RoPE (cos, sin) pairs per position.
    pub(crate) rope_cs: Vec<f32>,
    /// `(n_batch, n_head_kv · head_dim)`: the batch's values in the cache
    /// type, before they are scattered into a transposed cache.
    pub(crate) v_conv: AlignedBuf,
    /// `(n_batch, n_expert)`: router logits.
    pub(crate) router: Vec<f32>,
    /// `(n_batch · n_expert_used)`: expert choices of the batch.
    pub(crate) routes: Vec<Route>,
    /// `(n_batch)`: the tokens routed to one expert.
    pub(crate) expert_tokens: Vec<usize>,
    /// `(n_batch, dim)`: inputs of one expert (scaled rows of `xb`).
    pub(crate) expert_in: Vec<f32>,
    /// `(n_batch, dim)`: outputs of one expert.
    pub(crate) expert_out: Vec<f32>,
    /// Per thread: attention's converted queries, scores and accumulators.
    pub(crate) attn: AlignedBuf,
    pub(crate) mm: Matmul,
    /// Sees the inputs of every matrix product, when set.
    pub(crate) observer: super::observe::Observer,
    /// The threads every parallel step runs on.
    pub(crate) pool: Pool,
    /// `(n_vocab)`: logits of the last position.
    pub(crate) logits: Vec<f32>,
    /// Mllama: the image's cross-attention keys and values and mask row.
    pub(crate) cross: Option<Box<super::cross::CrossContext>>,
}

impl State {
    pub(crate) fn new(layout: Layout, opts: &StateOptions) -> Result<State, ModelError> {
        let c = &layout.config;
        let n_ctx = opts
            .n_ctx
            .unwrap_or_else(|| c.n_ctx_train.min(DEFAULT_MAX_CTX));
        let bad = |what, value| ModelError::BadStateSize { what, value };
        if n_ctx == 0 {
            return Err(bad("context length", n_ctx));
        }
        if opts.n_batch == 0 || opts.n_batch > 1 << 16 {
            return Err(bad("batch size", opts.n_batch));
        }
        let n_batch = opts.n_batch.min(n_ctx);
        let n_threads = opts
            .n_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 256);

        let (k_type, v_type) = opts.kv_types();
        let transform = Hadamard::supports(c.head_dim);
        let quantized = |t: KvType| t.ggml_type().block_size() > 1;
        let (rotate_qk, rotate_v) = match opts.kv_rotation {
            Some(true) if !transform => {
                return Err(ModelError::Unsupported {
                    what: format!(
                        "KV rotation: no Hadamard transform of the head size {}",
                        c.head_dim
                    ),
                });
            }
            Some(on) => (on, on),
            None => (
                transform && (c.rotation.r3 || quantized(k_type)),
                transform && quantized(v_type),
            ),
        };
        let kv = KvCache::new(
            k_type.ggml_type(),
            v_type.ggml_type(),
            c.n_layer,
            c.n_head_kv,
            c.head_dim,
            n_ctx,
        )?;
        let pool = Pool::new(n_threads).map_err(ModelError::Threads)?;
        let n_expert = c.moe.as_ref().map_or(0, |m| m.n_expert);
        let n_used = c.moe.as_ref().map_or(0, |m| m.n_expert_used);
        let state = State {
            opts: StateOptions {
                n_ctx: Some(n_ctx),
                ..opts.clone()
            },
            released: false,
            rotate_qk,
            rotate_v,
            n_past: 0,
            n_batch,
            v_conv: AlignedBuf::zeroed(n_batch * c.n_head_kv * kv.index.v_row_bytes),
            kv,
            x: vec![0.0; n_batch * c.dim],
            xb: vec![0.0; n_batch * c.dim],
            q: vec![0.0; n_batch * c.q_dim()],
            k: vec![0.0; n_batch * c.kv_dim()],
            v: vec![0.0; n_batch * c.kv_dim()],
            att_out: vec![0.0; n_batch * c.q_dim()],
            hb: vec![0.0; n_batch * layout.max_ff],
            rope_cs: vec![0.0; n_batch * c.head_dim],
            router: vec![0.0; n_batch * n_expert],
            routes: Vec::with_capacity(n_batch * n_used),
            expert_tokens: Vec::with_capacity(n_batch),
            expert_in: vec![0.0; if n_expert > 0 { n_batch * c.dim } else { 0 }],
            expert_out: vec![0.0; if n_expert > 0 { n_batch * c.dim } else { 0 }],
            attn: AlignedBuf::zeroed(n_threads * attention::scratch_bytes(c.head_dim)),
            mm: Matmul::new(n_threads, n_batch, layout.max_act_row_bytes),
            observer: super::observe::Observer::default(),
            pool,
            logits: vec![0.0; c.n_vocab],
            cross: None,
            layout,
        };
        Ok(state)
    }

    /// Positions already in the KV cache (where the next token goes).
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// The context length: the most positions the cache holds.
    pub fn n_ctx(&self) -> usize {
        self.opts.n_ctx.unwrap_or(self.kv.n_ctx)
    }

    /// Bytes of the KV cache now allocated (none after
    /// [`release`](Self::release)).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv.k.bytes().len() + self.kv.v.bytes().len()
    }

    /// Bytes of the activation buffers now allocated (none after
    /// [`release`](Self::release), but the threads' small tiles).
    pub fn scratch_bytes(&self) -> usize {
        let vecs = [
            &self.x,
            &self.xb,
            &self.q,
            &self.k,
            &self.v,
            &self.att_out,
            &self.hb,
            &self.rope_cs,
            &self.router,
            &self.expert_in,
            &self.expert_out,
            &self.logits,
        ];
        vecs.iter().map(|v| v.capacity() * 4).sum::<usize>()
            + self.v_conv.bytes().len()
            + self.attn.bytes().len()
            + self.mm.bytes()
    }

    /// Gives back the KV cache and the activation buffers (memory
    /// pressure): the cache is emptied, and the next use allocates the
    /// buffers again, as new. Returns the bytes given back.
    pub fn release(&mut self) -> usize {
        if self.released {
            return 0;
        }
        let bytes = self.kv_cache_bytes() + self.scratch_bytes();
        self.kv.k = AlignedBuf::zeroed(0);
        self.kv.v = AlignedBuf::zeroed(0);
        for v in [
            &mut self.x,
            &mut self.xb,
            &mut self.q,
            &mut self.k,
            &mut self.v,
        ] {
            *v = Vec::new();
        }
        for v in [
            &mut self.att_out,
            &mut self.hb,
            &mut self.rope_cs,
            &mut self.router,
        ] {
            *v = Vec::new();
        }
        for v in [&mut self.expert_in, &mut self.expert_out, &mut self.logits] {
            *v = Vec::new();
        }
        self.routes = Vec::new();
        self.expert_tokens = Vec::new();
        self.v_conv = AlignedBuf::zeroed(0);
        self.attn = AlignedBuf::zeroed(0);
        self.mm = Matmul::new(1, 0, 0);
        self.n_past = 0;
        self.released = true;
        bytes - self.scratch_bytes()
    }

    /// Allocates the buffers again after [`release`](Self::release) (the
    /// forward pass and [`read_cache`](Self::read_cache) call it).
    pub(crate) fn reacquire(&mut self) -> Result<(), ModelError> {
        if self.released {
            let observer = std::mem::take(&mut self.observer);
            *self = State::new(self.layout.clone(), &self.opts)?;
            self.observer = observer;
        }
        Ok(())
    }

    /// Sets (or, with `None`, removes) the observer of the inputs of every
    /// matrix product of the forward passes run with this state; returns
    /// the previous one.
    pub fn set_observer(
        &mut self,
        observer: Option<Box<dyn super::observe::ActivationObserver>>,
    ) -> Option<Box<dyn super::observe::ActivationObserver>> {
        std::mem::replace(&mut self.observer.0, observer)
    }

    /// Threads used for matrix products and attention.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Whether queries and keys are rotated (R3; what the K cache holds
    /// depends on it).
    pub fn rotates_qk(&self) -> bool {
        self.rotate_qk
    }

    /// Whether values are rotated (what the V cache holds depends on it).
    pub fn rotates_v(&self) -> bool {
        self.rotate_v
    }

    /// The K cache element type.
    pub fn kv_type(&self) -> GgmlType {
        self.kv.k_ty
    }

    /// The V cache element type.
    pub fn kv_type_v(&self) -> GgmlType {
        self.kv.v_ty
    }

    /// The logits of the last position of the last [`forward`](super::Model::forward).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Forgets everything (an image context too): the next token goes to
    /// position 0.
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.cross = None;
    }

    /// Keeps the first `n` positions and forgets the rest (to regenerate or
    /// edit the end of a conversation). Does nothing if `n >= n_past`.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// The byte ranges of the cache that hold positions `0..n`, keys then
    /// values, each `(false, range)` in `kv.k` or `(true, range)` in `kv.v`,
    /// in a fixed order (layer, head[, dimension]). Their concatenation is
    /// the cache's saved form ([`write_cache`](Self::write_cache)).
    fn cache_ranges(&self, n: usize) -> Vec<(bool, std::ops::Range<usize>)> {
        let c = &self.layout.config;
        let kv = &self.kv;
        let es = kv.v_ty.type_size();
        let mut out = Vec::new();
        for il in 0..c.n_layer {
            for h in 0..c.n_head_kv {
                let k = kv.k_offset(il, h, 0);
                out.push((false, k..k + n * kv.index.k_row_bytes));
            }
        }
        for il in 0..c.n_layer {
            for h in 0..c.n_head_kv {
                if kv.v_transposed() {
                    for d in 0..c.head_dim {
                        let v = kv.vt_offset(il, h, d, 0);
                        out.push((true, v..v + n * es));
                    }
                } else {
                    let v = kv.v_offset(il, h, 0);
                    out.push((true, v..v + n * kv.index.v_row_bytes));
                }
            }
        }
        out
    }

    /// Writes the cache's positions `0..n_past` (see [`read_cache`](Self::read_cache)).
    pub fn write_cache(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.n_past == 0 {
            // Nothing to write (and a released cache has no bytes to slice).
            return Ok(());
        }
        for (is_v, r) in self.cache_ranges(self.n_past) {
            let buf = if is_v { &self.kv.v } else { &self.kv.k };
            w.write_all(&buf.bytes()[r])?;
        }
        Ok(())
    }

    /// Reads `n` positions written by [`write_cache`](Self::write_cache) of a
    /// state of the same model and K and V types, and continues after them. On
    /// an error the state is empty.
    pub fn read_cache(&mut self, n: usize, r: &mut dyn std::io::Read) -> Result<(), ModelError> {
        self.reacquire()?;
        self.n_past = 0;
        if n > self.kv.n_ctx {
            return Err(ModelError::ContextFull {
                n_past: 0,
                n_new: n,
                n_ctx: self.kv.n_ctx,
            });
        }
        for (is_v, range) in self.cache_ranges(n) {
            let buf = if is_v { &mut self.kv.v } else { &mut self.kv.k };
            r.read_exact(&mut buf.bytes_mut()[range])
                .map_err(ModelError::Io)?;
        }
        self.n_past = n;
        Ok(())
    }
}
