//! Quantizing an mmproj file (a vision tower, `general.architecture =
//! clip`), as llama.cpp treats its mmproj files: the tower stays at f16 or
//! q8_0 whatever the text model gets. Vision encoders lose far more than
//! text layers at 4 bits, and they are small next to the text model, so
//! llama.cpp's converter offers only f32, f16, bf16 and q8_0 for them and
//! its model cards pair every text quantization with an f16 or q8_0 mmproj.
//!
//! Only 2-D weight matrices change type; norms, biases, gates, the class,
//! position and tile embeddings and the (4-D) patch convolution stay f32.

use spinel_quant::GgmlType;

use super::FileType;
use crate::gguf::GgufFile;

/// The `--type`s an mmproj accepts. Any other is refused rather than mapped
/// to one of these: a script asking for q4_k_m everywhere learns that the
/// tower is kept at q8_0 instead of getting a file that is not what it
/// asked for.
pub const MMPROJ_TYPES: [FileType; 3] = [FileType::F32, FileType::F16, FileType::Q8_0];

/// Whether `file` is an mmproj (llama.cpp's `general.architecture = clip`).
pub fn is_mmproj(file: &GgufFile<'_>) -> bool {
    file.metadata()
        .get_str("general.architecture")
        .is_ok_and(|a| a == "clip")
}

/// Whether tensor `name` of shape `dims` (GGUF order) is a weight matrix
/// that may change type: `*.weight`, exactly two dimensions above 1, and
/// not an embedding table (class, position, tile position).
fn is_matrix(name: &str, dims: &[u64]) -> bool {
    let big = dims.iter().filter(|&&d| d > 1).count();
    let matrix = big == 2 && dims.len() >= 2 && dims[0] > 1 && dims[1] > 1;
    let embedding = name.contains("position_embd") || name.contains("class_embd");
    matrix && name.ends_with(".weight") && !embedding
}

/// The type tensor `name` (`dims` in GGUF order, `from` its present type)
/// gets in an mmproj quantized to `ftype` (one of [`MMPROJ_TYPES`]): a
/// matrix becomes Q8_0 when its rows are whole Q8_0 blocks (F16 when not),
/// or F16, or F32; everything else keeps its type.
pub fn mmproj_tensor_type(name: &str, dims: &[u64], from: GgmlType, ftype: FileType) -> GgmlType {
    if !is_matrix(name, dims) {
        return from;
    }
    match ftype {
        FileType::Q8_0 if dims[0] % GgmlType::Q8_0.block_size() as u64 == 0 => GgmlType::Q8_0,
        FileType::Q8_0 | FileType::F16 => GgmlType::F16,
        _ => GgmlType::F32,
    }
}

/// The type of every tensor of mmproj `file` for `ftype`, in file order.
pub fn plan_mmproj_types(file: &GgufFile<'_>, ftype: FileType) -> Vec<GgmlType> {
    file.tensors()
        .iter()
        .map(|t| mmproj_tensor_type(t.name(), t.dims(), t.ggml_type(), ftype))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_weight_matrices_change_type() {
        let q8 = |name: &str, dims: &[u64]| {
            mmproj_tensor_type(name, dims, GgmlType::F32, FileType::Q8_0)
        };
        assert_eq!(q8("v.blk.0.attn_q.weight", &[32, 32]), GgmlType::Q8_0);
        assert_eq!(q8("mm.model.fc.weight", &[48, 16]), GgmlType::F16);
        assert_eq!(q8("v.patch_embd.weight", &[588, 32]), GgmlType::F16);
        for (name, dims) in [
            ("v.blk.0.attn_q.bias", &[32][..]),
            ("v.blk.0.ln1.weight", &[32]),
            ("v.class_embd", &[32]),
            ("v.position_embd.weight", &[32, 17]),
            ("v.tile_position_embd.weight", &[32, 4, 4, 9]),
            ("v.pre_tile_position_embd.weight", &[128, 9]),
            ("v.patch_embd.weight", &[14, 14, 3, 32]),
            ("v.global.blk.0.gate_attn", &[1]),
        ] {
            assert_eq!(q8(name, dims), GgmlType::F32, "{name}");
        }
        let f16 = mmproj_tensor_type(
            "mm.model.fc.weight",
            &[48, 16],
            GgmlType::F32,
            FileType::F16,
        );
        assert_eq!(f16, GgmlType::F16);
        let back = mmproj_tensor_type(
            "v.blk.0.attn_q.weight",
            &[32, 32],
            GgmlType::Q8_0,
            FileType::F32,
        );
        assert_eq!(back, GgmlType::F32);
    }
}
