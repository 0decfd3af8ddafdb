//! # spinel-quant
//!
//! Block quantization bit-compatible with GGUF/ggml (Q4_0 … Q8_K, F16, BF16)
//! and the SIMD kernels that compute with it: AVX2 / AVX-512 (VNNI) on x86-64,
//! NEON (dotprod, i8mm) on aarch64, scalar everywhere, chosen once at run time.
//!
//! `#![no_std]` + `alloc`; the default `std` feature adds run-time CPU feature
//! detection and the `SPINEL_ISA` override.
//!
//! ```
//! use spinel_quant::{GgmlType, Kernels};
//! let k = Kernels::get();
//! let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
//! let mut q = vec![0u8; GgmlType::Q8_0.row_size(64).unwrap()];
//! (k.of(GgmlType::Q8_0).from_float)(&x, &mut q);
//! let dot = (k.of(GgmlType::Q8_0).vec_dot)(&q, &q);
//! let exact: f32 = x.iter().map(|v| v * v).sum();
//! assert!((dot - exact).abs() < 0.05 * exact);
//! ```

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blocks;
pub mod formats;
pub mod hadamard;
pub mod kernels;
pub mod types;

pub use hadamard::Hadamard;
pub use half::{bf16, f16};
pub use kernels::{Isa, IsaError, Kernels, Specialised, TypeKernels};
pub use types::{GgmlType, QK_K};
