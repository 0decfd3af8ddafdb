//! ggml's block structs, byte for byte.
//!
//! Each struct is `#[repr(C)]` with no padding, so a slice of GGUF tensor data
//! can be viewed as a slice of blocks with `bytemuck::cast_slice`. Field order,
//! names and sizes follow `ggml-common.h`; a compile-time check pins each size.
//! Scales are IEEE half floats (`half::f16`, stored little-endian like ggml's
//! `ggml_half`) except in [`BlockQ8K`], whose scale is an `f32`.

use crate::types::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per block of the 32-wide formats.
pub const QK: usize = 32;

/// 4-bit symmetric: `x = d · (q − 8)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in the high nibble.
    pub qs: [u8; QK / 2],
}

/// 4-bit with minimum: `x = d · q + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// 5-bit symmetric: `x = d · (q − 16)`, the fifth bits in `qh`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 5-bit with minimum: `x = d · q + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 8-bit symmetric: `x = d · q`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// 8-bit symmetric with `s = d · Σq` precomputed (activations for Q4_1/Q5_1).
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// 2-bit K-quant: 16 groups of 16 with 4-bit scales and mins.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// 3-bit K-quant: 16 groups of 16 with 6-bit scales.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// 4-bit K-quant: 8 groups of 32 with 6-bit scales and mins.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// 5-bit K-quant: 8 groups of 32 with 6-bit scales and mins.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6-bit K-quant: 16 groups of 16 with 8-bit scales.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 8-bit K activations: `x = d · q`, with the sum of every 16 `q`s.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// Non-linear 4-bit: `x = d · KVALUES_IQ4NL[q]`, the low nibbles of `qs`
/// are elements 0..16, the high ones 16..32 (as Q4_0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// IQ4_NL values in a 256-element super-block: block `b` of 32 has the
/// 6-bit scale `ls = (scales_l nibble b) | (scales_h bits 2b..2b+2) << 4`
/// and `x = d · (ls − 32) · KVALUES_IQ4NL[q]`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

/// 2.0625 bpw: per block of 32, `qs[4b..4b+2]` read as two little-endian
/// u32 hold four 8-bit indices into `IQ2XXS_GRID` (first word) and four
/// 7-bit sign indices into `KSIGNS_IQ2XS` plus a 4-bit scale (second word).
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ2XXS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
}

/// 2.3125 bpw: each `qs` entry is a 9-bit `IQ2XS_GRID` index and a 7-bit
/// sign index; two 4-bit scales per block of 32.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ2XS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
    pub scales: [u8; QK_K / 32],
}

/// 2.5625 bpw: 10-bit `IQ2S_GRID` indices (low 8 bits in the first half of
/// `qs`, high 2 in `qh`), explicit sign bytes in the second half of `qs`,
/// two 4-bit scales per block of 32.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ2S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub scales: [u8; QK_K / 32],
}

/// 3.0625 bpw: 8-bit `IQ3XXS_GRID` indices (`qs[..64]`), then per block of
/// 32 a little-endian u32 of four 7-bit sign indices and a 4-bit scale.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ3XXS {
    pub d: f16,
    pub qs: [u8; 3 * QK_K / 8],
}

/// 3.4375 bpw: 9-bit `IQ3S_GRID` indices (low 8 in `qs`, high bit in `qh`),
/// explicit sign bits, two 4-bit scales per 64 elements.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ3S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub signs: [u8; QK_K / 8],
    pub scales: [u8; QK_K / 64],
}

/// 1.5625 bpw: 11-bit `IQ1S_GRID` indices (low 8 in `qs`, high 3 in `qh`),
/// and per block of 32 in `qh` a 3-bit scale and the sign of the ±1/8 shift.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ1S {
    pub d: f16,
    pub qs: [u8; QK_K / 8],
    pub qh: [u16; QK_K / 32],
}

/// 1.75 bpw: 11-bit `IQ1S_GRID` indices (high 3 bits and the shift sign of
/// each group of 8 in a nibble of `qh`), 3-bit scales per 16 elements, and
/// the f16 super-block scale spread over the top nibbles of the four
/// little-endian u16s of `scales`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIQ1M {
    pub qs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 16],
    pub scales: [u8; QK_K / 32],
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<BlockIQ2XXS>() == 66);
    assert!(size_of::<BlockIQ2XS>() == 74);
    assert!(size_of::<BlockIQ2S>() == 82);
    assert!(size_of::<BlockIQ3XXS>() == 98);
    assert!(size_of::<BlockIQ3S>() == 110);
    assert!(size_of::<BlockIQ1S>() == 50);
    assert!(size_of::<BlockIQ1M>() == 56);
    assert!(size_of::<BlockIQ4NL>() == 18);
    assert!(size_of::<BlockIQ4XS>() == 136);
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
    assert!(size_of::<BlockQ2K>() == 84);
    assert!(size_of::<BlockQ3K>() == 110);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ5K>() == 176);
    assert!(size_of::<BlockQ6K>() == 210);
    assert!(size_of::<BlockQ8K>() == 292);
};

/// A block type: its ggml type and elements per block.
pub trait Block: Pod + Send + Sync + 'static {
    const TYPE: crate::GgmlType;
    /// Elements per block.
    const N: usize;
}

macro_rules! impl_block {
    ($($t:ty => $g:ident, $n:expr;)*) => {$(
        impl Block for $t {
            const TYPE: crate::GgmlType = crate::GgmlType::$g;
            const N: usize = $n;
        }
    )*};
}

impl_block! {
    BlockQ4_0 => Q4_0, QK;
    BlockQ4_1 => Q4_1, QK;
    BlockQ5_0 => Q5_0, QK;
    BlockQ5_1 => Q5_1, QK;
    BlockQ8_0 => Q8_0, QK;
    BlockQ8_1 => Q8_1, QK;
    BlockQ2K => Q2K, QK_K;
    BlockQ3K => Q3K, QK_K;
    BlockQ4K => Q4K, QK_K;
    BlockQ5K => Q5K, QK_K;
    BlockQ6K => Q6K, QK_K;
    BlockQ8K => Q8K, QK_K;
    BlockIQ4NL => IQ4NL, QK;
    BlockIQ4XS => IQ4XS, QK_K;
    BlockIQ2XXS => IQ2XXS, QK_K;
    BlockIQ2XS => IQ2XS, QK_K;
    BlockIQ2S => IQ2S, QK_K;
    BlockIQ3XXS => IQ3XXS, QK_K;
    BlockIQ3S => IQ3S, QK_K;
    BlockIQ1S => IQ1S, QK_K;
    BlockIQ1M => IQ1M, QK_K;
    f32 => F32, 1;
    f16 => F16, 1;
    half::bf16 => BF16, 1;
}
