//! A Hugging Face checkpoint folder: `config.json`, `generation_config.json`
//! and the weights in one or more memory-mapped `*.safetensors` files.
//!
//! Weights are indexed once (name → shard, dtype, shape, byte range) with the
//! `safetensors` crate, which validates each header (offsets in bounds,
//! contiguous, sizes matching dtype × shape); the data is then read straight
//! from the maps, so a conversion never holds more than a tensor or two of
//! decoded data in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::{Map, Value as Json};
use spinel_quant::{bf16, f16};

use super::error::ConvertError;

type Result<T> = std::result::Result<T, ConvertError>;

/// The name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor element type the converter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

/// Where one checkpoint tensor lives.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order: `shape[0]` is the outermost dimension.
    pub shape: Vec<usize>,
    shard: usize,
    start: usize,
    end: usize,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// The weights of a checkpoint, mapped.
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, SourceTensor>,
}

impl Checkpoint {
    /// Finds and indexes the safetensors files of `dir`: the shards named by
    /// `model.safetensors.index.json` if it exists, else every
    /// `model*.safetensors` file (as llama.cpp's converter does).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join(INDEX_FILE);
        let (files, weight_map) = if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(Json::as_object)
                .ok_or_else(|| ConvertError::BadJson {
                    path: index_path.clone(),
                    message: "no \"weight_map\" object".into(),
                })?;
            let mut weight_map = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| ConvertError::BadJson {
                    path: index_path.clone(),
                    message: format!("weight_map[{name:?}] is not a file name"),
                })?;
                check_shard_name(&index_path, file)?;
                weight_map.insert(name.clone(), file.to_string());
            }
            let files: BTreeSet<String> = weight_map.values().cloned().collect();
            (files.into_iter().collect::<Vec<_>>(), Some(weight_map))
        } else {
            let mut files = Vec::new();
            let rd = std::fs::read_dir(dir).map_err(|source| ConvertError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            for entry in rd {
                let entry = entry.map_err(|source| ConvertError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("model") && name.ends_with(".safetensors") {
                    files.push(name);
                }
            }
            files.sort();
            (files, None)
        };
        if files.is_empty() {
            let what = if dir.join("pytorch_model.bin").is_file()
                || dir.join("pytorch_model.bin.index.json").is_file()
            {
                "model.safetensors (PyTorch .bin checkpoints are not read; save the model as safetensors)"
            } else {
                "model.safetensors (or model-*.safetensors shards)"
            };
            return Err(ConvertError::MissingFile {
                path: dir.join("model.safetensors"),
                what,
            });
        }

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors: BTreeMap<String, SourceTensor> = BTreeMap::new();
        for file in &files {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(ConvertError::MissingFile {
                    path,
                    what: "shard named by model.safetensors.index.json",
                });
            }
            let f = File::open(&path).map_err(|source| ConvertError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is only read. The file must not be truncated
            // or rewritten while the conversion runs (that could SIGBUS or
            // change the bytes read); this is the usual contract of
            // converting a checkpoint in place, stated in `convert`'s docs.
            let map = unsafe { Mmap::map(&f) }.map_err(|source| ConvertError::Io {
                path: path.clone(),
                source,
            })?;
            let shard = shards.len();
            index_shard(shard, &path, &map, &shards, &mut tensors)?;
            shards.push(Shard { path, map });
        }

        if let Some(weight_map) = weight_map {
            let in_files: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
            let in_index: BTreeSet<&str> = weight_map.keys().map(String::as_str).collect();
            let missing: Vec<_> = in_index.difference(&in_files).collect();
            let extra: Vec<_> = in_files.difference(&in_index).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(ConvertError::IndexMismatch {
                    message: format!(
                        "tensors listed but not in the shards: {missing:?}; tensors in the shards but not listed: {extra:?}"
                    ),
                });
            }
            for (name, file) in &weight_map {
                let t = &tensors[name];
                let actual = shards[t.shard]
                    .path
                    .file_name()
                    .map(|s| s.to_string_lossy());
                if actual.as_deref() != Some(file.as_str()) {
                    return Err(ConvertError::IndexMismatch {
                        message: format!(
                            "tensor {name:?} is listed in {file:?} but found in {:?}",
                            actual.unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(Checkpoint { shards, tensors })
    }

    /// The tensor named `name`, if the checkpoint has it.
    pub fn get(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.get(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.shards[t.shard].map[t.start..t.end]
    }

    /// Decodes elements `[first, first + out.len())` of `t` (row-major) to
    /// f32. Conversions from F16 and BF16 are exact.
    pub fn read_f32(&self, t: &SourceTensor, first: usize, out: &mut [f32]) {
        let size = t.dtype.size();
        let bytes = &self.bytes(t)[first * size..(first + out.len()) * size];
        decode(t.dtype, bytes, out);
    }
}

/// Decodes little-endian elements of `dtype` to f32.
pub fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

/// A shard name from the index must be a plain file name in the folder.
fn check_shard_name(index_path: &Path, file: &str) -> Result<()> {
    let p = Path::new(file);
    let plain = p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
    if !plain || !file.ends_with(".safetensors") {
        return Err(ConvertError::BadJson {
            path: index_path.to_path_buf(),
            message: format!("shard {file:?} is not a .safetensors file name in this folder"),
        });
    }
    Ok(())
}

fn index_shard(
    shard: usize,
    path: &Path,
    map: &Mmap,
    shards: &[Shard],
    tensors: &mut BTreeMap<String, SourceTensor>,
) -> Result<()> {
    let st = SafeTensors::deserialize(map).map_err(|e| ConvertError::BadSafetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = map.as_ptr() as usize;
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            StDtype::F32 => Dtype::F32,
            StDtype::F16 => Dtype::F16,
            StDtype::BF16 => Dtype::BF16,
            other => {
                return Err(ConvertError::UnsupportedDtype {
                    tensor: name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let data = view.data();
        let start = data.as_ptr() as usize - base;
        let src = SourceTensor {
            name: name.clone(),
            dtype,
            shape: view.shape().to_vec(),
            shard,
            start,
            end: start + data.len(),
        };
        if let Some(prev) = tensors.get(&name) {
            return Err(ConvertError::DuplicateTensor {
                tensor: name,
                first: shards[prev.shard].path.clone(),
                second: path.to_path_buf(),
            });
        }
        tensors.insert(name, src);
    }
    Ok(())
}

/// Reads a JSON file into a value.
pub fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read(path).map_err(|source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ConvertError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a JSON file that must hold an object.
pub fn read_json_object(path: &Path) -> Result<Map<String, Json>> {
    match read_json(path)? {
        Json::Object(m) => Ok(m),
        _ => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            message: "not a JSON object".into(),
        }),
    }
}
