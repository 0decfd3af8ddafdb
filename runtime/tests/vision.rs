//! Vision input against the Hugging Face oracles in
//! `../shared/testdata/vision` (Llama 3.2 Vision = mllama, Llama 4): image
//! decoding, the image processors, the prompt-side token work, and the
//! vision towers.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use spinel_runtime::convert::{Conversion, ConvertOptions, OutType};
use spinel_runtime::tokenizer::{Tokenizer, Vocab};
use spinel_runtime::vision::{
    HfWeights, Llama4ImageTokens, Llama4Vision, Llama4VisionConfig, MllamaVision,
    MllamaVisionConfig, MmprojFile, ProcessorConfig, ProcessorKind, RgbImage, VisionError,
    VisionTower, decode_image, decode_image_capped, llama4_expand_image_tokens, llama4_preprocess,
    mllama_cross_attention_mask, mllama_preprocess, mmproj_tensor_name,
};

const IMAGES: [(&str, &str); 3] = [
    ("landscape_300x200.png", "landscape"),
    ("portrait_160x400.png", "portrait"),
    ("small_64x48.jpg", "small"),
];

fn vision_data() -> PathBuf {
    let root = match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    };
    root.join("vision")
}

fn model_dir(name: &str) -> PathBuf {
    vision_data().join("dev").join(name)
}

fn read_json(path: &Path) -> Json {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A little-endian .npy array (f4 or u1): shape and values as f32.
struct Npy {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(!header.contains("'fortran_order': True"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[start + hlen..];
    let data: Vec<f32> = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else if header.contains("'|u1'") {
        body.iter().map(|&b| f32::from(b)).collect()
    } else {
        panic!("unsupported dtype in {header}");
    };
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}",
        path.display()
    );
    Npy { shape, data }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn prompt(reference: &Json, file: &str) -> Json {
    reference["prompts"][file].clone()
}

fn ids_of(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usizes(v: &Json) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn load_image(file: &str) -> RgbImage {
    let path = vision_data().join("images").join(file);
    decode_image(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The PIL-decoded RGB of the JPEG that every reference number used.
fn pil_small() -> RgbImage {
    let npy = read_npy(&vision_data().join("images/small_64x48_decoded_rgb.npy"));
    assert_eq!(npy.shape, vec![48, 64, 3]);
    let hwc: Vec<u8> = npy.data.iter().map(|&v| v as u8).collect();
    RgbImage::from_hwc(64, 48, &hwc).unwrap()
}

/// The exact input of the processors: PNGs through our decoder (lossless),
/// the JPEG as PIL decoded it.
fn reference_image(file: &str) -> RgbImage {
    if file.ends_with(".jpg") {
        pil_small()
    } else {
        load_image(file)
    }
}

fn tokenizer(dir: &Path) -> Tokenizer {
    Tokenizer::from_vocab(Vocab::from_hf_dir(dir).unwrap()).unwrap()
}

fn u8_of(img: &RgbImage) -> Vec<f32> {
    img.data.iter().map(|&v| f32::from(v)).collect()
}

#[test]
fn png_decode_matches_reference_sizes() {
    let meta = read_json(&vision_data().join("images/images.json"));
    for (file, _) in IMAGES {
        let img = load_image(file);
        let wh = usizes(&meta[file]["size_wh"]);
        assert_eq!((img.width, img.height), (wh[0], wh[1]), "{file}");
    }
}

#[test]
fn jpeg_decode_is_close_to_pil() {
    let ours = load_image("small_64x48.jpg");
    let pil = pil_small();
    assert_eq!((ours.width, ours.height), (pil.width, pil.height));
    let diff = ours
        .data
        .iter()
        .zip(&pil.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let n_diff = ours
        .data
        .iter()
        .zip(&pil.data)
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "JPEG: ours vs PIL max |diff| = {diff} levels, {n_diff}/{} values differ",
        pil.data.len()
    );
    assert!(
        diff <= JPEG_DECODER_BOUND,
        "JPEG decoder differs from PIL by {diff} levels"
    );
}

/// The largest per-sample difference between zune-jpeg and PIL/libjpeg on
/// the test JPEG (IDCT and chroma upsampling differ between decoders).
const JPEG_DECODER_BOUND: u8 = 4;

#[test]
fn corrupt_truncated_and_oversized_images_are_refused() {
    let png = std::fs::read(vision_data().join("images/landscape_300x200.png")).unwrap();
    let jpg = std::fs::read(vision_data().join("images/small_64x48.jpg")).unwrap();
    assert!(matches!(
        decode_image(b"GIF89a...."),
        Err(VisionError::UnknownFormat)
    ));
    assert!(matches!(decode_image(&[]), Err(VisionError::UnknownFormat)));
    for (name, bytes) in [("png", &png), ("jpg", &jpg)] {
        for cut in [8, 30, bytes.len() / 2, bytes.len() - 12] {
            let r = decode_image(&bytes[..cut]);
            assert!(
                matches!(r, Err(VisionError::Decode { .. })),
                "{name} cut at {cut}: {r:?}"
            );
        }
    }
    // Flip bytes in the PNG's image data (CRC mismatch / bad deflate).
    let mut bad = png.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 16] {
        *b ^= 0x5a;
    }
    assert!(matches!(
        decode_image(&bad),
        Err(VisionError::Decode { .. })
    ));
    // A header claiming 60000×60000 (3.6 GP): refused from the header.
    let mut bomb = png[..33].to_vec();
    bomb[16..20].copy_from_slice(&60000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = png_crc(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    match decode_image(&bomb) {
        Err(VisionError::TooLarge {
            width: 60000,
            height: 60000,
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The real images under a small cap.
    assert!(matches!(
        decode_image_capped(&png, 1000),
        Err(VisionError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_image_capped(&jpg, 1000),
        Err(VisionError::TooLarge { .. })
    ));
    // A JPEG whose frame header claims 65535×65535.
    let mut jbomb = jpg.clone();
    let sof = (0..jbomb.len() - 1)
        .find(|&i| jbomb[i] == 0xFF && (jbomb[i + 1] == 0xC0 || jbomb[i + 1] == 0xC2))
        .expect("SOF marker");
    jbomb[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(
        matches!(decode_image(&jbomb), Err(VisionError::TooLarge { .. })),
        "{:?}",
        decode_image(&jbomb)
    );
}

fn png_crc(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn processor_configs_come_from_the_model_dirs() {
    let m = ProcessorConfig::from_hf_dir(model_dir("mllama")).unwrap();
    assert_eq!(m.kind, ProcessorKind::Mllama);
    assert_eq!((m.tile_size, m.max_tiles), (56, 4));
    let l = ProcessorConfig::from_hf_dir(model_dir("llama4_vision")).unwrap();
    assert_eq!(l.kind, ProcessorKind::Llama4);
    assert_eq!((l.tile_size, l.max_tiles, l.tokens_per_tile()), (56, 4, 4));
    assert!(ProcessorConfig::from_hf_dir("/nonexistent/spinel").is_err());
}

#[test]
fn mllama_processor_matches_reference() {
    let dir = model_dir("mllama");
    let reference = read_json(&dir.join("reference.json"));
    let cfg = ProcessorConfig::from_hf_dir(&dir).unwrap();
    let tok = tokenizer(&dir);
    let image_token = reference["config"]["image_token_index"].as_u64().unwrap() as u32;
    for (file, short) in IMAGES {
        let p = prompt(&reference, file);
        let trace = &p["preprocess_trace"];
        let out = mllama_preprocess(&cfg, &reference_image(file)).unwrap();
        assert_eq!(
            usizes(&trace["canvas_hw"]),
            [out.canvas.0, out.canvas.1],
            "{file}"
        );
        assert_eq!(
            usizes(&trace["tile_grid_hw"]),
            [out.tile_grid.0, out.tile_grid.1],
            "{file}"
        );
        let resized = read_npy(&dir.join(format!("resized_u8_{short}.npy")));
        assert_eq!(
            resized.shape,
            [3, out.resized.height, out.resized.width],
            "{file}"
        );
        assert_eq!(resized.data, u8_of(&out.resized), "{file}: resized uint8");
        let pv = read_npy(&dir.join(format!("pixel_values_{short}.npy")));
        assert_eq!(pv.data.len(), out.pixel_values.len());
        let d = max_abs_diff(&pv.data, &out.pixel_values);
        eprintln!("mllama {file}: pixel_values max |diff| = {d:e}");
        assert!(d <= 1e-5, "{file}: pixel_values differ by {d}");
        // Unused tile slots are exactly zero.
        let per_tile = 3 * cfg.tile_size * cfg.tile_size;
        assert!(
            out.pixel_values[out.num_tiles * per_tile..]
                .iter()
                .all(|&v| v == 0.0)
        );
        assert_eq!(
            p["aspect_ratio_ids"][0].as_u64().unwrap() as usize,
            out.aspect_ratio_id
        );
        let mask: Vec<usize> = usizes(&p["aspect_ratio_mask"][0]);
        assert_eq!(
            mask,
            out.aspect_ratio_mask
                .iter()
                .map(|&m| m as usize)
                .collect::<Vec<_>>()
        );
        assert_eq!(p["num_tiles"][0].as_u64().unwrap() as usize, out.num_tiles);
        // Prompt side: no expansion; the cross-attention mask from positions.
        let ids = tok
            .encode(p["prompt_text"].as_str().unwrap(), false, true)
            .unwrap();
        assert_eq!(ids, ids_of(&p["input_ids"]), "{file}: input_ids");
        let cam = mllama_cross_attention_mask(&ids, image_token, &[out.num_tiles], cfg.max_tiles)
            .unwrap();
        let want: Vec<u8> = p["cross_attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| usizes(&row[0]).into_iter().map(|v| v as u8))
            .collect();
        assert_eq!(cam, want, "{file}: cross_attention_mask");
    }
}

#[test]
fn mllama_cross_attention_mask_with_several_images() {
    // Tokens: 0 1 [img] 3 [img] [img] 6 7; image token = 9.
    let ids = [0, 1, 9, 3, 9, 9, 6, 7];
    let m = mllama_cross_attention_mask(&ids, 9, &[1, 2, 3], 4).unwrap();
    let row = |i: usize, k: usize| m[(i * 3 + k) * 4..(i * 3 + k + 1) * 4].to_vec();
    assert_eq!(row(1, 0), [0, 0, 0, 0]);
    assert_eq!(row(2, 0), [1, 0, 0, 0]);
    assert_eq!(row(3, 0), [1, 0, 0, 0]);
    assert_eq!(row(4, 0), [0, 0, 0, 0]);
    // Consecutive image tokens 4 and 5 both attend to the rest.
    assert_eq!(row(4, 1), [1, 1, 0, 0]);
    assert_eq!(row(7, 1), [1, 1, 0, 0]);
    assert_eq!(row(7, 2), [1, 1, 1, 0]);
    assert!(mllama_cross_attention_mask(&ids, 9, &[1], 4).is_err());
}

#[test]
fn llama4_processor_matches_reference() {
    let dir = model_dir("llama4_vision");
    let reference = read_json(&dir.join("reference.json"));
    let cfg = ProcessorConfig::from_hf_dir(&dir).unwrap();
    let tok = tokenizer(&dir);
    let tokens = Llama4ImageTokens::from_lookup(|s| tok.token_id(s)).unwrap();
    for (file, short) in IMAGES {
        let p = prompt(&reference, file);
        let trace = &p["preprocess_trace"];
        let out = llama4_preprocess(&cfg, &reference_image(file)).unwrap();
        assert_eq!(
            usizes(&trace["canvas_hw"]),
            [out.canvas.0, out.canvas.1],
            "{file}"
        );
        assert_eq!(
            usizes(&p["aspect_ratio_hw"]),
            [out.aspect_ratio.0, out.aspect_ratio.1]
        );
        assert_eq!(
            trace["num_tiles_incl_global"].as_u64().unwrap() as usize,
            out.n_tiles
        );
        assert_eq!(
            trace["global_tile"].as_bool().unwrap(),
            out.global.is_some()
        );
        let resized = read_npy(&dir.join(format!("resized_u8_{short}.npy")));
        assert_eq!(
            resized.shape,
            [3, out.resized.height, out.resized.width],
            "{file}"
        );
        assert_eq!(resized.data, u8_of(&out.resized), "{file}: resized uint8");
        let pv = read_npy(&dir.join(format!("pixel_values_{short}.npy")));
        assert_eq!(pv.data.len(), out.pixel_values.len(), "{file}");
        let d = max_abs_diff(&pv.data, &out.pixel_values);
        eprintln!("llama4 {file}: pixel_values max |diff| = {d:e}");
        assert!(d <= 1e-5, "{file}: pixel_values differ by {d}");
        let ids = tok
            .encode(p["prompt_text"].as_str().unwrap(), false, true)
            .unwrap();
        assert_eq!(
            ids,
            ids_of(&p["input_ids_of_prompt_text_without_expansion"]),
            "{file}"
        );
        let expanded =
            llama4_expand_image_tokens(&ids, &tokens, &[out.aspect_ratio], cfg.tokens_per_tile())
                .unwrap();
        assert_eq!(
            expanded,
            ids_of(&p["input_ids"]),
            "{file}: expanded input_ids"
        );
    }
}

#[test]
fn llama4_float32_quirk_of_the_readme() {
    // 84-px tiles, a 300×200 landscape: canvas 168×252, resized 168×251.
    let mut cfg = ProcessorConfig::from_hf_dir(model_dir("llama4_vision")).unwrap();
    cfg.tile_size = 84;
    cfg.patch_size = 14;
    cfg.max_tiles = 6;
    let img = RgbImage {
        width: 300,
        height: 200,
        data: vec![128; 3 * 300 * 200],
    };
    let out = llama4_preprocess(&cfg, &img).unwrap();
    assert_eq!(out.canvas, (168, 252));
    assert_eq!((out.resized.height, out.resized.width), (168, 251));
}

#[test]
fn processors_on_our_jpeg_decode_stay_close() {
    let ours = load_image("small_64x48.jpg");
    let pil = pil_small();
    let m = ProcessorConfig::from_hf_dir(model_dir("mllama")).unwrap();
    let a = mllama_preprocess(&m, &ours).unwrap();
    let b = mllama_preprocess(&m, &pil).unwrap();
    let dm = max_abs_diff(&a.pixel_values, &b.pixel_values);
    let l = ProcessorConfig::from_hf_dir(model_dir("llama4_vision")).unwrap();
    let c = llama4_preprocess(&l, &ours).unwrap();
    let d = llama4_preprocess(&l, &pil).unwrap();
    let dl = max_abs_diff(&c.pixel_values, &d.pixel_values);
    eprintln!("JPEG via zune-jpeg vs PIL decode: mllama pixel_values {dm}, llama4 {dl}");
    // One uint8 level is 1/(255·std) in mllama units (≤ 0.0152) and 2/255
    // for Llama 4; the bound is the decoder bound in levels.
    let bound = f32::from(JPEG_DECODER_BOUND);
    assert!(dm <= bound / (255.0 * 0.26) + 1e-4, "{dm}");
    assert!(dl <= bound * 2.0 / 255.0 + 0.01, "{dl}");
}

/// Tolerance of the f32 towers against HF's f32 eager forward.
const TOWER_TOL: f32 = 1e-4;

/// Compares a traced stage with its debug_*.npy (after an optional
/// re-layout of the reference) and returns the max |diff|.
fn check_stage(
    dir: &Path,
    stage: &str,
    short: &str,
    ours: &[f32],
    reference: Option<Vec<f32>>,
) -> f32 {
    let npy = read_npy(&dir.join(format!("debug_{stage}_{short}.npy")));
    let want = reference.unwrap_or(npy.data);
    assert_eq!(want.len(), ours.len(), "{stage} {short}: length");
    let d = max_abs_diff(&want, ours);
    assert!(d <= TOWER_TOL, "{stage} {short}: max |diff| {d}");
    d
}

#[test]
fn mllama_tower_matches_reference() {
    let dir = model_dir("mllama");
    let reference = read_json(&dir.join("reference.json"));
    let cfg = MllamaVisionConfig::from_hf_config(&read_json(&dir.join("config.json"))).unwrap();
    let tower = MllamaVision::load(cfg.clone(), &HfWeights::open(&dir).unwrap()).unwrap();
    for (file, short) in IMAGES {
        let p = prompt(&reference, file);
        let pv = read_npy(&dir.join(format!("pixel_values_{short}.npy")));
        let mask: Vec<u8> = usizes(&p["aspect_ratio_mask"][0])
            .iter()
            .map(|&m| m as u8)
            .collect();
        let ar = p["aspect_ratio_ids"][0].as_u64().unwrap() as usize;
        let mut stages: Vec<(String, Vec<f32>)> = Vec::new();
        let out = tower
            .encode(&pv.data, ar, &mask, &mut |n, v| {
                stages.push((n.to_string(), v.to_vec()))
            })
            .unwrap();
        let mut report = Vec::new();
        for (stage, ours) in &stages {
            let relayout = (stage == "patch_embedding_out").then(|| {
                // HF: conv output [T, D, g, g]; ours [T, P, D].
                let npy = read_npy(&dir.join(format!("debug_{stage}_{short}.npy")));
                let (t, d, g) = (npy.shape[0], npy.shape[1], npy.shape[2]);
                let mut v = vec![0f32; npy.data.len()];
                for ti in 0..t {
                    for c in 0..d {
                        for pi in 0..g * g {
                            v[(ti * g * g + pi) * d + c] = npy.data[(ti * d + c) * g * g + pi];
                        }
                    }
                }
                v
            });
            report.push((
                stage.clone(),
                check_stage(&dir, stage, short, ours, relayout),
            ));
        }
        assert_eq!(stages.len(), 5, "{file}: traced stages");
        let vo = read_npy(&dir.join(format!("vision_out_{short}.npy")));
        let dv = max_abs_diff(&vo.data, &out.vision_out);
        let feats = read_npy(&dir.join(format!("image_features_{short}.npy")));
        let df = max_abs_diff(&feats.data, &out.features);
        eprintln!("mllama {file}: {report:?} vision_out {dv:e} image_features {df:e}");
        assert!(
            dv <= TOWER_TOL && df <= TOWER_TOL,
            "{file}: vision_out {dv}, features {df}"
        );
    }
}

#[test]
fn llama4_tower_matches_reference() {
    let dir = model_dir("llama4_vision");
    let cfg = Llama4VisionConfig::from_hf_config(&read_json(&dir.join("config.json"))).unwrap();
    let tower = Llama4Vision::load(cfg.clone(), &HfWeights::open(&dir).unwrap()).unwrap();
    let per_tile = cfg.num_channels * cfg.image_size * cfg.image_size;
    for (file, short) in IMAGES {
        let pv = read_npy(&dir.join(format!("pixel_values_{short}.npy")));
        let n_tiles = pv.data.len() / per_tile;
        let mut stages: Vec<(String, Vec<f32>)> = Vec::new();
        let out = tower
            .encode(&pv.data, n_tiles, &mut |n, v| {
                stages.push((n.to_string(), v.to_vec()))
            })
            .unwrap();
        let report: Vec<(String, f32)> = stages
            .iter()
            .map(|(s, v)| (s.clone(), check_stage(&dir, s, short, v, None)))
            .collect();
        assert_eq!(stages.len(), 5, "{file}: traced stages");
        let vo = read_npy(&dir.join(format!("vision_out_{short}.npy")));
        let dv = max_abs_diff(&vo.data, &out.vision_out);
        let feats = read_npy(&dir.join(format!("image_features_{short}.npy")));
        let df = max_abs_diff(&feats.data, &out.features);
        eprintln!("llama4 {file}: {report:?} vision_out {dv:e} image_features {df:e}");
        assert!(
            dv <= TOWER_TOL && df <= TOWER_TOL,
            "{file}: vision_out {dv}, features {df}"
        );
    }
}

/// A scratch folder for this test binary.
fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spinel-vision-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Converts `model` to f32 GGUF + mmproj, returns (text path, mmproj path).
fn convert_f32(model: &str, test: &str) -> (PathBuf, PathBuf, Conversion) {
    let dir = model_dir(model);
    let opts = ConvertOptions {
        outtype: OutType::F32,
        name: None,
    };
    let conv = Conversion::plan(&dir, &opts).unwrap();
    assert!(conv.has_mmproj(), "{model}: no mmproj planned");
    let out = scratch_dir(&format!("{model}-{test}"));
    let (text, mmproj) = (out.join("model.gguf"), out.join("model.mmproj.gguf"));
    conv.write(&text, &mut |_| {}).unwrap();
    conv.write_mmproj(&mmproj, &mut |_| {})
        .unwrap()
        .expect("an mmproj");
    (text, mmproj, conv)
}

fn open_mmproj(path: &Path) -> MmprojFile {
    // SAFETY: the test's own file, not modified while mapped.
    unsafe { MmprojFile::open(path) }.unwrap()
}

#[test]
fn llama4_mmproj_round_trip() {
    let dir = model_dir("llama4_vision");
    let (text, mmproj, conv) = convert_f32("llama4_vision", "mmproj");
    assert_eq!(conv.arch().name(), "llama4");
    let f = open_mmproj(&mmproj);
    let m = f.metadata();
    assert_eq!(m.get_str("general.architecture").unwrap(), "clip");
    assert_eq!(m.get_str("clip.projector_type").unwrap(), "llama4");
    assert_eq!(m.get_uint("clip.vision.projector.scale_factor").unwrap(), 2);
    assert_eq!(m.get_uint("clip.vision.projection_dim").unwrap(), 16);
    // llama.cpp's tensor names.
    let names: Vec<String> = conv.mmproj_tensors().into_iter().map(|t| t.name).collect();
    for n in [
        "v.patch_embd.weight",
        "v.position_embd.weight",
        "v.class_embd",
        "v.pre_ln.weight",
        "v.blk.0.attn_q.bias",
        "v.blk.1.ffn_down.weight",
        "mm.model.mlp.1.weight",
        "mm.model.mlp.2.weight",
        "mm.model.fc.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n} in {names:?}");
    }
    assert_eq!(
        f.processor().unwrap(),
        ProcessorConfig::from_hf_dir(&dir).unwrap()
    );
    let VisionTower::Llama4(tower) = f.load_tower().unwrap() else {
        panic!("not llama4")
    };
    let hf = Llama4Vision::load(tower.cfg.clone(), &HfWeights::open(&dir).unwrap()).unwrap();
    let cfg = f.processor().unwrap();
    for (file, short) in IMAGES {
        let img = llama4_preprocess(&cfg, &reference_image(file)).unwrap();
        let a = tower
            .encode(&img.pixel_values, img.n_tiles, &mut |_, _| {})
            .unwrap();
        let b = hf
            .encode(&img.pixel_values, img.n_tiles, &mut |_, _| {})
            .unwrap();
        assert_eq!(a.features, b.features, "{file}: GGUF vs safetensors tower");
        let want = read_npy(&dir.join(format!("image_features_{short}.npy")));
        let d = max_abs_diff(&want.data, &a.features);
        eprintln!("llama4 mmproj {file}: image_features max |diff| {d:e}");
        assert!(d <= TOWER_TOL);
    }
    std::fs::remove_file(text).ok();
    std::fs::remove_file(mmproj).ok();
}

#[test]
fn mllama_conversion_round_trip() {
    let dir = model_dir("mllama");
    let (text, mmproj, conv) = convert_f32("mllama", "mmproj");
    assert_eq!(conv.arch().name(), "mllama");
    // The text model: llama layout plus cross-attention layers.
    let tnames: Vec<String> = conv.tensors().into_iter().map(|t| t.name).collect();
    let cfg_json = read_json(&dir.join("config.json"));
    let cross: Vec<usize> = usizes(&cfg_json["text_config"]["cross_attention_layers"]);
    for &l in &cross {
        for t in [
            "cross_attn_q.weight",
            "cross_attn_k_norm.weight",
            "cross_attn_attn_gate",
            "cross_attn_mlp_gate",
            "ffn_gate.weight",
        ] {
            assert!(tnames.contains(&format!("blk.{l}.{t}")), "blk.{l}.{t}");
        }
        assert!(!tnames.contains(&format!("blk.{l}.attn_q.weight")));
    }
    assert!(tnames.contains(&"blk.0.attn_q.weight".to_string()));
    assert!(
        !tnames
            .iter()
            .any(|n| n.starts_with("v.") || n.starts_with("mm."))
    );
    let embd = conv
        .tensors()
        .into_iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    let out = conv
        .tensors()
        .into_iter()
        .find(|t| t.name == "output.weight")
        .unwrap();
    assert_eq!(embd.dims[1], out.dims[1] + 8, "embedding rows = vocab + 8");
    let meta = conv.metadata();
    let layers = meta
        .iter()
        .find(|(k, _)| k == "mllama.attention.cross_attention_layers")
        .unwrap();
    let got: Vec<u32> = layers.1.as_array().unwrap().to_vec::<u32>().unwrap();
    assert_eq!(got, cross.iter().map(|&l| l as u32).collect::<Vec<_>>());
    // The mmproj.
    let f = open_mmproj(&mmproj);
    assert_eq!(
        f.metadata().get_str("clip.projector_type").unwrap(),
        "mllama"
    );
    assert_eq!(
        f.processor().unwrap(),
        ProcessorConfig::from_hf_dir(&dir).unwrap()
    );
    let VisionTower::Mllama(tower) = f.load_tower().unwrap() else {
        panic!("not mllama")
    };
    let want_cfg = MllamaVisionConfig::from_hf_config(&cfg_json).unwrap();
    assert_eq!(tower.cfg, want_cfg);
    let pcfg = f.processor().unwrap();
    for (file, short) in IMAGES {
        let img = mllama_preprocess(&pcfg, &reference_image(file)).unwrap();
        let out = tower
            .encode(
                &img.pixel_values,
                img.aspect_ratio_id,
                &img.aspect_ratio_mask,
                &mut |_, _| {},
            )
            .unwrap();
        let want = read_npy(&dir.join(format!("image_features_{short}.npy")));
        let d = max_abs_diff(&want.data, &out.features);
        eprintln!("mllama mmproj {file}: image_features max |diff| {d:e}");
        assert!(d <= TOWER_TOL);
    }
    std::fs::remove_file(text).ok();
    std::fs::remove_file(mmproj).ok();
}

#[test]
fn mmproj_tensor_names() {
    use spinel_runtime::vision::Projector;
    let n = |p, s: &str| mmproj_tensor_name(p, s);
    assert_eq!(
        n(Projector::Llama4, "multi_modal_projector.linear_1.weight").unwrap(),
        "mm.model.fc.weight"
    );
    assert_eq!(
        n(
            Projector::Llama4,
            "vision_model.model.layers.12.self_attn.o_proj.bias"
        )
        .unwrap(),
        "v.blk.12.attn_out.bias"
    );
    assert_eq!(
        n(
            Projector::Mllama,
            "vision_model.global_transformer.layers.3.gate_ffn"
        )
        .unwrap(),
        "v.global.blk.3.gate_ffn"
    );
    assert!(
        n(
            Projector::Llama4,
            "vision_model.model.layers.x.mlp.fc1.weight"
        )
        .is_none()
    );
    assert!(n(Projector::Mllama, "vision_model.unknown").is_none());
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn last_logits(p: &Json) -> Vec<f32> {
    let bytes = base64_decode(p["last_logits_b64"].as_str().unwrap());
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Tolerance of the text model's last logits (f32 all through).
const LOGITS_TOL: f32 = 1e-3;

#[test]
fn llama4_image_prompts_match_reference_logits() {
    use spinel_runtime::model::{EmbeddingOverride, KvType, Model};
    use spinel_runtime::vision::llama4_image_prompt;
    let dir = model_dir("llama4_vision");
    let reference = read_json(&dir.join("reference.json"));
    let (text, mmproj, _) = convert_f32("llama4_vision", "logits");
    let model = Model::load(&text).unwrap();
    let tok = Tokenizer::from_gguf(model.gguf()).unwrap();
    let special = Llama4ImageTokens::from_lookup(|s| tok.token_id(s)).unwrap();
    let f = open_mmproj(&mmproj);
    let VisionTower::Llama4(tower) = f.load_tower().unwrap() else {
        panic!("not llama4")
    };
    let pcfg = f.processor().unwrap();
    // The text-only prompt checks the text model on its own.
    let p = prompt(&reference, "text_only");
    let ids = tok
        .encode(p["prompt_text"].as_str().unwrap(), false, true)
        .unwrap();
    assert_eq!(ids, ids_of(&p["input_ids"]));
    let mut state = model.new_state(Some(ids.len()), KvType::F32).unwrap();
    let d = max_abs_diff(model.forward(&mut state, &ids).unwrap(), &last_logits(&p));
    eprintln!("llama4 text_only: last logits max |diff| {d:e}");
    assert!(d <= LOGITS_TOL, "text_only: {d}");
    for (file, _) in IMAGES {
        let p = prompt(&reference, file);
        let ids = tok
            .encode(p["prompt_text"].as_str().unwrap(), false, true)
            .unwrap();
        let ip =
            llama4_image_prompt(&tower, &pcfg, &special, &ids, &[reference_image(file)]).unwrap();
        assert_eq!(ip.tokens, ids_of(&p["input_ids"]), "{file}");
        let mut state = model.new_state(Some(ip.tokens.len()), KvType::F32).unwrap();
        let over = EmbeddingOverride {
            indices: &ip.embed_indices,
            rows: &ip.embeds,
        };
        let logits = model
            .forward_with_embeddings(&mut state, &ip.tokens, over)
            .unwrap();
        let want = last_logits(&p);
        let d = max_abs_diff(logits, &want);
        eprintln!("llama4 {file}: last logits max |diff| {d:e}");
        assert!(d <= LOGITS_TOL, "{file}: {d}");
        // The image matters: plain token embeddings give other logits.
        let mut state = model.new_state(Some(ip.tokens.len()), KvType::F32).unwrap();
        let plain = model.forward(&mut state, &ip.tokens).unwrap();
        assert!(
            max_abs_diff(plain, &want) > 0.1,
            "{file}: the image changed nothing"
        );
    }
    std::fs::remove_file(text).ok();
    std::fs::remove_file(mmproj).ok();
}

#[test]
fn extreme_aspect_ratios_and_tiny_images_preprocess() {
    let m = ProcessorConfig::from_hf_dir(model_dir("mllama")).unwrap();
    let l = ProcessorConfig::from_hf_dir(model_dir("llama4_vision")).unwrap();
    for (w, h) in [(1, 1), (1, 3000), (3000, 1), (2, 700), (57, 56), (56, 57)] {
        let img = RgbImage {
            width: w,
            height: h,
            data: vec![200; 3 * w * h],
        };
        let a = mllama_preprocess(&m, &img).unwrap();
        assert!(a.num_tiles >= 1 && a.num_tiles <= m.max_tiles, "{w}x{h}");
        assert!(a.resized.width >= 1 && a.resized.height >= 1, "{w}x{h}");
        assert!(a.pixel_values.iter().all(|v| v.is_finite()));
        let b = llama4_preprocess(&l, &img).unwrap();
        assert!(b.n_tiles >= 1 && b.n_tiles <= l.max_tiles + 1, "{w}x{h}");
        assert!(b.pixel_values.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn f16_mmproj_stays_close() {
    let dir = model_dir("llama4_vision");
    let opts = ConvertOptions {
        outtype: OutType::F16,
        name: None,
    };
    let conv = Conversion::plan(&dir, &opts).unwrap();
    let path = scratch_dir("llama4-f16").join("m.mmproj.gguf");
    conv.write_mmproj(&path, &mut |_| {})
        .unwrap()
        .expect("an mmproj");
    let f = open_mmproj(&path);
    let VisionTower::Llama4(tower) = f.load_tower().unwrap() else {
        panic!("not llama4")
    };
    let cfg = f.processor().unwrap();
    let img = llama4_preprocess(&cfg, &reference_image("landscape_300x200.png")).unwrap();
    let out = tower
        .encode(&img.pixel_values, img.n_tiles, &mut |_, _| {})
        .unwrap();
    let want = read_npy(&dir.join("image_features_landscape.npy"));
    let d = max_abs_diff(&want.data, &out.features);
    eprintln!("llama4 f16 mmproj: image_features max |diff| {d:e}");
    assert!(d > 0.0 && d < 1e-2, "{d}");
    std::fs::remove_file(path).ok();
}

#[test]
fn broken_mmproj_files_give_errors() {
    use spinel_runtime::gguf::{GgufWriter, Value};
    let dir = scratch_dir("broken-mmproj");
    let write = |name: &str, w: &GgufWriter<'_>| {
        let p = dir.join(name);
        std::fs::write(&p, w.to_bytes()).unwrap();
        p
    };
    // An unknown projector type.
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("clip"))
        .unwrap();
    w.add_kv("clip.projector_type", Value::from("qwen2vl"))
        .unwrap();
    let p = write("unknown.gguf", &w);
    // SAFETY: the test's own file, not modified while mapped.
    let opened = unsafe { MmprojFile::open(&p) };
    assert!(matches!(opened, Err(VisionError::Config(_))));
    // A known type without its keys or tensors.
    let mut w = GgufWriter::new();
    w.add_kv("clip.projector_type", Value::from("llama4"))
        .unwrap();
    let p = write("bare.gguf", &w);
    let f = open_mmproj(&p);
    assert!(matches!(f.processor(), Err(VisionError::Config(_))));
    assert!(matches!(f.load_tower(), Err(VisionError::Config(_))));
    // Every key of a real mmproj but no tensors.
    let (text, real, _) = convert_f32("llama4_vision", "broken");
    let real_file = open_mmproj(&real);
    let mut w = GgufWriter::new();
    for (k, v) in real_file.metadata().iter() {
        if k != "general.alignment" {
            w.add_kv(k, v.clone()).unwrap();
        }
    }
    let p = write("no-tensors.gguf", &w);
    let f = open_mmproj(&p);
    assert!(f.processor().is_ok());
    match f.load_tower() {
        Err(VisionError::Weights(m)) => assert!(m.contains("missing"), "{m}"),
        Err(e) => panic!("expected a missing weight, got {e}"),
        Ok(_) => panic!("a tower without weights loaded"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::remove_file(text).ok();
    std::fs::remove_file(real).ok();
}

/// Greedy decoding from `logits` for `steps` tokens (plain `forward` per
/// step: an mllama image context reuses the prompt's last mask row).
fn greedy_steps(
    model: &spinel_runtime::model::Model<'_>,
    state: &mut spinel_runtime::model::State,
    logits: &[f32],
    steps: usize,
) -> Vec<u32> {
    let argmax = |l: &[f32]| {
        (0..l.len())
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .unwrap() as u32
    };
    let mut out = vec![argmax(logits)];
    while out.len() < steps {
        let l = model.forward(state, &[*out.last().unwrap()]).unwrap();
        out.push(argmax(l));
    }
    out
}

/// The reference greedy tokens up to (and including) the first step whose
/// top-2 margin is below 1e-2 (later steps could then differ).
fn reliable_greedy(p: &Json) -> Vec<u32> {
    let g = &p["greedy"];
    let tokens = ids_of(&g["generate"]);
    let margins = g["step_top1_minus_top2"].as_array().unwrap();
    let n = margins
        .iter()
        .position(|m| m.as_f64().unwrap() < 1e-2)
        .map_or(tokens.len(), |i| i + 1);
    tokens[..n].to_vec()
}

#[test]
fn mllama_image_prompts_match_reference_logits() {
    use spinel_runtime::model::{KvType, Model, ModelError};
    use spinel_runtime::vision::mllama_image_prompt;
    let dir = model_dir("mllama");
    let reference = read_json(&dir.join("reference.json"));
    let (text, mmproj, _) = convert_f32("mllama", "logits");
    let model = Model::load(&text).unwrap();
    let tok = Tokenizer::from_gguf(model.gguf()).unwrap();
    let image_token = tok.token_id("<|image|>").unwrap();
    let f = open_mmproj(&mmproj);
    let VisionTower::Mllama(tower) = f.load_tower().unwrap() else {
        panic!("not mllama")
    };
    let pcfg = f.processor().unwrap();
    // Text only: the cross-attention layers are skipped.
    let p = prompt(&reference, "text_only");
    let ids = tok
        .encode(p["prompt_text"].as_str().unwrap(), false, true)
        .unwrap();
    assert_eq!(ids, ids_of(&p["input_ids"]));
    let want = reliable_greedy(&p);
    let mut state = model
        .new_state(Some(ids.len() + want.len()), KvType::F32)
        .unwrap();
    let logits = model.forward(&mut state, &ids).unwrap().to_vec();
    let d = max_abs_diff(&logits, &last_logits(&p));
    eprintln!("mllama text_only: last logits max |diff| {d:e}");
    assert!(d <= LOGITS_TOL, "text_only: {d}");
    assert_eq!(greedy_steps(&model, &mut state, &logits, want.len()), want);
    for (file, _) in IMAGES {
        let p = prompt(&reference, file);
        let ids = tok
            .encode(p["prompt_text"].as_str().unwrap(), false, true)
            .unwrap();
        assert_eq!(ids, ids_of(&p["input_ids"]), "{file}");
        let ip = mllama_image_prompt(&tower, &pcfg, image_token, &ids, &[reference_image(file)])
            .unwrap();
        let want_mask: Vec<u8> = p["cross_attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row[0].as_array().unwrap().clone())
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(ip.mask, want_mask, "{file}");
        let want = reliable_greedy(&p);
        let mut state = model
            .new_state(Some(ids.len() + want.len()), KvType::F32)
            .unwrap();
        model
            .set_image_context(&mut state, &ip.cross_states, ip.n_tiles)
            .unwrap();
        let logits = model
            .forward_with_cross_mask(&mut state, &ip.tokens, &ip.mask)
            .unwrap()
            .to_vec();
        let d = max_abs_diff(&logits, &last_logits(&p));
        eprintln!("mllama {file}: last logits max |diff| {d:e}");
        assert!(d <= LOGITS_TOL, "{file}: {d}");
        let got = greedy_steps(&model, &mut state, &logits, want.len());
        eprintln!("mllama {file}: greedy {got:?}");
        assert_eq!(got, want, "{file}");
        // The image matters: without it the logits differ.
        let mut plain = model.new_state(Some(ids.len()), KvType::F32).unwrap();
        let l = model.forward(&mut plain, &ids).unwrap();
        assert!(max_abs_diff(l, &last_logits(&p)) > 0.1, "{file}");
        // A mask of the wrong size and states of the wrong width are errors.
        let e = model.forward_with_cross_mask(&mut state, &ids, &ip.mask[1..]);
        assert!(matches!(e, Err(ModelError::BadImageInput { .. })), "{e:?}");
        let e = model.set_image_context(&mut state, &ip.cross_states[1..], ip.n_tiles);
        assert!(matches!(e, Err(ModelError::BadImageInput { .. })), "{e:?}");
    }
    std::fs::remove_file(text).ok();
    std::fs::remove_file(mmproj).ok();
}

#[test]
fn engine_sessions_take_images_and_forget_them() {
    use spinel_runtime::engine::{Engine, EngineError, GenerateOptions, SessionOptions};
    use spinel_runtime::sampling::SamplingParams;
    use std::sync::Arc;
    let dir = model_dir("mllama");
    let reference = read_json(&dir.join("reference.json"));
    let (text, mmproj, _) = convert_f32("mllama", "engine");
    let mut engine = Engine::load(&text).unwrap();
    let tok = Tokenizer::from_gguf(engine.model().gguf()).unwrap();
    let encode = |p: &Json| {
        tok.encode(p["prompt_text"].as_str().unwrap(), false, true)
            .unwrap()
    };
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: Some(8),
        ignore_eog: true,
        ..GenerateOptions::default()
    };
    let img = reference_image("landscape_300x200.png");
    let p = prompt(&reference, "landscape_300x200.png");
    // Without an mmproj images are refused.
    {
        let engine = Arc::new(Engine::load(&text).unwrap());
        let mut s = engine.session(&SessionOptions::default()).unwrap();
        let e = s.complete_with_images(&encode(&p), std::slice::from_ref(&img), &opts, |_| {});
        assert!(matches!(e, Err(EngineError::NoVision)), "{e:?}");
    }
    engine.load_mmproj(&mmproj).unwrap();
    let engine = Arc::new(engine);
    let mut s = engine.session(&SessionOptions::default()).unwrap();
    let g = s
        .complete_with_images(&encode(&p), std::slice::from_ref(&img), &opts, |_| {})
        .unwrap();
    assert_eq!(g.generated_ids, ids_of(&p["greedy"]["generate"]));
    assert!(g.stats.image_encode_secs > 0.0);
    // The image is not saved with a session.
    let saved = scratch_dir("engine").join("s.session");
    assert!(matches!(
        s.save(&saved),
        Err(EngineError::SessionFile { .. })
    ));
    // A text prompt after it starts over: the text-only reference.
    let t = prompt(&reference, "text_only");
    let g = s.complete(&encode(&t), &opts, |_| {}).unwrap();
    assert_eq!(g.stats.cached_tokens, 0);
    assert_eq!(g.generated_ids, ids_of(&t["greedy"]["generate"]));
    std::fs::remove_file(text).ok();
    std::fs::remove_file(mmproj).ok();
}

#[test]
fn chat_turns_with_images_render_as_transformers_does() {
    use spinel_runtime::engine::{Engine, GenerateOptions, SessionOptions};
    use spinel_runtime::sampling::SamplingParams;
    use std::sync::Arc;
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: Some(8),
        ignore_eog: true,
        ..GenerateOptions::default()
    };
    for model in ["mllama", "llama4_vision"] {
        let reference = read_json(&model_dir(model).join("reference.json"));
        let (text, mmproj, _) = convert_f32(model, "chat");
        let mut engine = Engine::load(&text).unwrap();
        engine.load_mmproj(&mmproj).unwrap();
        let engine = Arc::new(engine);
        for batched in [false, true] {
            let opened = SessionOptions {
                batched,
                ..SessionOptions::default()
            };
            let what = format!("{model}, batched {batched}");
            let mut s = engine.session(&opened).unwrap();
            let file = "landscape_300x200.png";
            let p = prompt(&reference, file);
            let question = p["messages"][0]["content"][1]["text"].as_str().unwrap();
            let image = reference_image(file);
            let g = s
                .chat_with_images(question, vec![image.clone()], &opts, |_| {})
                .unwrap();
            assert_eq!(g.prompt_ids, ids_of(&p["input_ids"]), "{what}");
            assert_eq!(g.generated_ids, ids_of(&p["greedy"]["generate"]), "{what}");
            // The next turn still sees the image, continuing the cache: no
            // encoding, the first turn not run again.
            let g2 = s
                .chat_with_images("And?", Vec::new(), &opts, |_| {})
                .unwrap();
            assert!(g2.prompt_ids.starts_with(&g.prompt_ids), "{what}");
            assert!(g2.stats.cached_tokens >= g.prompt_ids.len(), "{what}");
            assert_eq!(g2.stats.image_encode_secs, 0.0, "{what}");
            // The same as the whole conversation run from scratch.
            let rendered = engine.render_chat(&s.messages()[..3], true).unwrap();
            let ids = engine.tokenize_chat(&rendered).unwrap();
            let mut fresh = engine.session(&SessionOptions::default()).unwrap();
            let f = fresh
                .complete_with_images(&ids, std::slice::from_ref(&image), &opts, |_| {})
                .unwrap();
            assert_eq!(f.prompt_ids, g2.prompt_ids, "{what}");
            assert_eq!(f.generated_ids, g2.generated_ids, "{what}");
            // Another image in the same place is encoded, not reused.
            let mut other = engine.session(&opened).unwrap();
            other
                .chat_with_images(question, vec![image.clone()], &opts, |_| {})
                .unwrap();
            let g3 = other
                .complete_with_images(
                    &ids,
                    &[reference_image("portrait_160x400.png")],
                    &opts,
                    |_| {},
                )
                .unwrap();
            assert!(g3.stats.image_encode_secs > 0.0, "{what}");
            assert_eq!(g3.stats.cached_tokens, 0, "{what}");
        }
        std::fs::remove_file(text).ok();
        std::fs::remove_file(mmproj).ok();
    }
}

#[test]
fn the_memory_budget_counts_the_vision_tower() {
    use spinel_runtime::engine::{Engine, EngineError};
    use spinel_runtime::model::LoadOptions;
    for model in ["mllama", "llama4_vision"] {
        let (text, mmproj, _) = convert_f32(model, "budget");
        let f = open_mmproj(&mmproj);
        // Every tensor of the file, in f32: the tower dequantizes at load.
        let n: u64 = {
            let bytes = std::fs::read(&mmproj).unwrap();
            let g = spinel_runtime::gguf::GgufFile::parse(&bytes).unwrap();
            g.tensors().iter().map(|t| t.n_elements()).sum()
        };
        let tower = f.tower_bytes();
        assert_eq!(tower, 4 * n, "{model}");
        assert!(tower > 0);
        // The model plans with what the tower leaves.
        let budget = 64 << 20;
        let opts = LoadOptions {
            memory_budget: Some(budget),
        };
        let engine = Engine::load_with_vision(&text, &mmproj, &opts).unwrap();
        assert!(engine.vision().is_some());
        assert_eq!(engine.vision_bytes(), tower);
        assert_eq!(
            engine.model().residency().budget,
            Some(budget - tower),
            "{model}"
        );
        // Without a budget nothing is planned; the tower is still counted.
        let opts = LoadOptions {
            memory_budget: None,
        };
        let engine = Engine::load_with_vision(&text, &mmproj, &opts).unwrap();
        assert_eq!(engine.model().residency().budget, None);
        assert_eq!(engine.vision_bytes(), tower);
        // A budget the tower alone fills is refused, naming both sizes.
        let opts = LoadOptions {
            memory_budget: Some(tower),
        };
        let e = Engine::load_with_vision(&text, &mmproj, &opts).err();
        let Some(EngineError::Vision(VisionError::Budget {
            tower_bytes,
            budget,
        })) = &e
        else {
            panic!("{model}: {e:?}")
        };
        assert_eq!((*tower_bytes, *budget), (tower, tower));
        assert!(e.unwrap().to_string().contains("vision tower"));
        // load_mmproj on a loaded engine reports the same bytes.
        let mut engine = Engine::load(&text).unwrap();
        assert_eq!(engine.vision_bytes(), 0);
        engine.load_mmproj(&mmproj).unwrap();
        assert_eq!(engine.vision_bytes(), tower);
        std::fs::remove_file(text).ok();
        std::fs::remove_file(mmproj).ok();
    }
}
