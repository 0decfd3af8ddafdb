//! The tensor element types Spinel knows, with their GGUF/ggml type ids.
//!
//! Ids and block geometry follow `ggml.h` (`enum ggml_type`) so a GGUF file's
//! tensor table can be read without translation.

use core::fmt;

/// A tensor element type: a float type or a block-quantized format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    /// 2.0625 bpw i-quant (E8 lattice grid, 256 points).
    IQ2XXS = 16,
    /// 2.3125 bpw i-quant (512-point grid, 4-bit scales per 16).
    IQ2XS = 17,
    /// 3.0625 bpw i-quant (D4 lattice grid, 256 points).
    IQ3XXS = 18,
    /// 1.5625 bpw i-quant (values −1, 0, 1 shifted by ±1/8).
    IQ1S = 19,
    /// Non-linear 4-bit quants (ggml's `kvalues_iq4nl`), blocks of 32.
    IQ4NL = 20,
    /// 3.4375 bpw i-quant (512-point grid, explicit signs).
    IQ3S = 21,
    /// 2.5625 bpw i-quant (1024-point grid, explicit signs).
    IQ2S = 22,
    /// IQ4_NL values in 256-element super-blocks with 6-bit block scales.
    IQ4XS = 23,
    /// 1.75 bpw i-quant (IQ1_S grid, scales per 16).
    IQ1M = 29,
    BF16 = 30,
}

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 24] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ3XXS,
        GgmlType::IQ1S,
        GgmlType::IQ4NL,
        GgmlType::IQ3S,
        GgmlType::IQ2S,
        GgmlType::IQ4XS,
        GgmlType::IQ1M,
        GgmlType::BF16,
    ];

    /// The type with GGUF/ggml id `id`, if Spinel supports it.
    pub const fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            16 => GgmlType::IQ2XXS,
            17 => GgmlType::IQ2XS,
            18 => GgmlType::IQ3XXS,
            19 => GgmlType::IQ1S,
            20 => GgmlType::IQ4NL,
            21 => GgmlType::IQ3S,
            22 => GgmlType::IQ2S,
            23 => GgmlType::IQ4XS,
            29 => GgmlType::IQ1M,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The ggml name of a type id, including ggml types Spinel cannot compute
    /// with (for error messages and `inspect`).
    pub const fn name_of_id(id: u32) -> Option<&'static str> {
        if let Some(t) = GgmlType::from_id(id) {
            return Some(t.name());
        }
        Some(match id {
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            // llama.cpp's old ARM-repacked Q4_0 layouts (ggml dropped them
            // from files: it repacks Q4_0 at load time instead).
            31 => "Q4_0_4_4",
            32 => "Q4_0_4_8",
            33 => "Q4_0_8_8",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return None,
        })
    }

    /// The GGUF/ggml type id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The ggml name (`"Q4_K"`, `"BF16"` …), as `gguf` and llama.cpp print it.
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ4XS => "IQ4_XS",
            GgmlType::IQ2XXS => "IQ2_XXS",
            GgmlType::IQ2XS => "IQ2_XS",
            GgmlType::IQ2S => "IQ2_S",
            GgmlType::IQ3XXS => "IQ3_XXS",
            GgmlType::IQ3S => "IQ3_S",
            GgmlType::IQ1S => "IQ1_S",
            GgmlType::IQ1M => "IQ1_M",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Parses a ggml name, case-insensitively.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for float types).
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::IQ4NL => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K
            | GgmlType::IQ4XS
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ1S
            | GgmlType::IQ1M => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        use crate::blocks::*;
        use core::mem::size_of;
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => size_of::<BlockQ4_0>(),
            GgmlType::Q4_1 => size_of::<BlockQ4_1>(),
            GgmlType::Q5_0 => size_of::<BlockQ5_0>(),
            GgmlType::Q5_1 => size_of::<BlockQ5_1>(),
            GgmlType::Q8_0 => size_of::<BlockQ8_0>(),
            GgmlType::Q8_1 => size_of::<BlockQ8_1>(),
            GgmlType::Q2K => size_of::<BlockQ2K>(),
            GgmlType::Q3K => size_of::<BlockQ3K>(),
            GgmlType::Q4K => size_of::<BlockQ4K>(),
            GgmlType::Q5K => size_of::<BlockQ5K>(),
            GgmlType::Q6K => size_of::<BlockQ6K>(),
            GgmlType::Q8K => size_of::<BlockQ8K>(),
            GgmlType::IQ4NL => size_of::<BlockIQ4NL>(),
            GgmlType::IQ4XS => size_of::<BlockIQ4XS>(),
            GgmlType::IQ2XXS => size_of::<BlockIQ2XXS>(),
            GgmlType::IQ2XS => size_of::<BlockIQ2XS>(),
            GgmlType::IQ2S => size_of::<BlockIQ2S>(),
            GgmlType::IQ3XXS => size_of::<BlockIQ3XXS>(),
            GgmlType::IQ3S => size_of::<BlockIQ3S>(),
            GgmlType::IQ1S => size_of::<BlockIQ1S>(),
            GgmlType::IQ1M => size_of::<BlockIQ1M>(),
        }
    }

    /// Whether this is a block-quantized type (not a float type).
    pub const fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// The type the activation row is converted to before a dot product with a
    /// weight row of this type (ggml's `vec_dot_type`).
    pub const fn vec_dot_type(self) -> GgmlType {
        match self {
            GgmlType::F32 => GgmlType::F32,
            GgmlType::F16 => GgmlType::F16,
            GgmlType::BF16 => GgmlType::BF16,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => GgmlType::Q8_0,
            // The Q8_1 block carries d·Σq, which the min term of these formats needs.
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K
            | GgmlType::IQ4XS
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ1S
            | GgmlType::IQ1M => GgmlType::Q8K,
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number
    /// of blocks or the size overflows.
    pub const fn row_size(self, n: usize) -> Option<usize> {
        let bs = self.block_size();
        if n % bs != 0 {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }

    /// Bits per weight of this format.
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::name_of_id(t.id()), Some(t.name()));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::name_of_id(23), Some("IQ4_XS"));
    }

    #[test]
    fn sizes_match_ggml() {
        // (type, block size, type size) from ggml's type traits table.
        let expect = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q8_1, 32, 36),
            (GgmlType::Q2K, 256, 84),
            (GgmlType::Q3K, 256, 110),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q5K, 256, 176),
            (GgmlType::Q6K, 256, 210),
            (GgmlType::Q8K, 256, 292),
            (GgmlType::IQ4NL, 32, 18),
            (GgmlType::IQ4XS, 256, 136),
            (GgmlType::IQ2XXS, 256, 66),
            (GgmlType::IQ2XS, 256, 74),
            (GgmlType::IQ2S, 256, 82),
            (GgmlType::IQ3XXS, 256, 98),
            (GgmlType::IQ3S, 256, 110),
            (GgmlType::IQ1S, 256, 50),
            (GgmlType::IQ1M, 256, 56),
        ];
        for (t, bs, ts) in expect {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
        }
        assert_eq!(GgmlType::Q4_0.row_size(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_size(33), None);
        assert_eq!(GgmlType::Q8_0.row_size(usize::MAX / 32 * 32), None);
    }
}
