//! The image processors of Llama 3.2 Vision (`MllamaImageProcessor`) and
//! Llama 4 (`Llama4ImageProcessor`): tile grid, resize, pad, split and
//! normalise, plus the prompt-side work (cross-attention mask, image token
//! expansion).

use std::path::Path;

use half::bf16;
use serde_json::Value;

use super::error::{Result, VisionError};
use super::image::RgbImage;
use super::resize::resize_bilinear_aa;

/// Which processor family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorKind {
    Mllama,
    Llama4,
}

/// Image processor settings (from preprocessor_config.json,
/// processor_config.json, or mmproj GGUF metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorConfig {
    pub kind: ProcessorKind,
    /// Tile side in pixels (`size.height` = `size.width`).
    pub tile_size: usize,
    /// Mllama `max_image_tiles`, Llama 4 `max_patches`.
    pub max_tiles: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// The fused rescale factor (1/255).
    pub rescale_factor: f64,
    /// Llama 4: `resize_to_max_canvas`.
    pub resize_to_max_canvas: bool,
    /// Llama 4: the vision patch size and pixel shuffle ratio, for the
    /// number of `<|patch|>` tokens per tile.
    pub patch_size: usize,
    pub pixel_shuffle_ratio: f64,
}

fn cfg_err(s: impl Into<String>) -> VisionError {
    VisionError::Config(s.into())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| VisionError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| cfg_err(format!("{}: {e}", path.display())))
}

fn triple(v: &Value, key: &str) -> Result<[f32; 3]> {
    let a = v
        .get(key)
        .and_then(Value::as_array)
        .filter(|a| a.len() == 3)
        .ok_or_else(|| cfg_err(format!("{key}: expected 3 numbers")))?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x
            .as_f64()
            .ok_or_else(|| cfg_err(format!("{key}: not a number")))? as f32;
    }
    Ok(out)
}

fn usize_of(v: &Value, key: &str) -> Option<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|x| usize::try_from(x).ok())
}

impl ProcessorConfig {
    /// Reads a Hugging Face model directory: the image processor inside
    /// processor_config.json (v5), else preprocessor_config.json (v4); the
    /// patch size and pixel shuffle ratio fall back to config.json.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<ProcessorConfig> {
        let dir = dir.as_ref();
        let proc_path = dir.join("processor_config.json");
        let (outer, image) = if proc_path.exists() {
            let outer = read_json(&proc_path)?;
            let image = outer.get("image_processor").cloned();
            (outer, image)
        } else {
            (Value::Null, None)
        };
        let image = match image {
            Some(v) => v,
            None => read_json(&dir.join("preprocessor_config.json"))?,
        };
        let config_path = dir.join("config.json");
        let vision = if config_path.exists() {
            read_json(&config_path)?
                .get("vision_config")
                .cloned()
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Self::from_json(&image, &outer, &vision)
    }

    /// From the image-processor JSON object, the outer processor object
    /// (may be null) and the model's vision_config (may be null).
    pub fn from_json(image: &Value, outer: &Value, vision: &Value) -> Result<ProcessorConfig> {
        let kind = match image.get("image_processor_type").and_then(Value::as_str) {
            Some(t) if t.starts_with("MllamaImageProcessor") => ProcessorKind::Mllama,
            Some(t) if t.starts_with("Llama4ImageProcessor") => ProcessorKind::Llama4,
            other => {
                return Err(cfg_err(format!(
                    "unsupported image_processor_type {other:?}"
                )));
            }
        };
        let size = image.get("size").ok_or_else(|| cfg_err("size missing"))?;
        let (h, w) = (usize_of(size, "height"), usize_of(size, "width"));
        let tile_size = match (h, w) {
            (Some(h), Some(w)) if h == w && h > 0 => h,
            _ => return Err(cfg_err("size: expected square height = width > 0")),
        };
        let max_key = if kind == ProcessorKind::Mllama {
            "max_image_tiles"
        } else {
            "max_patches"
        };
        let max_tiles = usize_of(image, max_key)
            .filter(|&n| (1..=64).contains(&n))
            .ok_or_else(|| cfg_err(format!("{max_key}: expected 1..=64")))?;
        let patch_size = usize_of(outer, "patch_size")
            .or_else(|| usize_of(vision, "patch_size"))
            .unwrap_or(14);
        // Only Llama 4 folds patches (its <|patch|> count depends on it).
        let pixel_shuffle_ratio = match kind {
            ProcessorKind::Mllama => 1.0,
            ProcessorKind::Llama4 => outer
                .get("pixel_shuffle_ratio")
                .or_else(|| vision.get("pixel_shuffle_ratio"))
                .and_then(Value::as_f64)
                .unwrap_or(0.5),
        };
        let cfg = ProcessorConfig {
            kind,
            tile_size,
            max_tiles,
            image_mean: triple(image, "image_mean")?,
            image_std: triple(image, "image_std")?,
            rescale_factor: image
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0),
            resize_to_max_canvas: image
                .get("resize_to_max_canvas")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            patch_size,
            pixel_shuffle_ratio,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the settings that the arithmetic below divides by.
    pub fn validate(&self) -> Result<()> {
        if self.image_std.iter().any(|&s| s.is_nan() || s == 0.0) {
            return Err(cfg_err("image_std must be non-zero"));
        }
        if self.rescale_factor.is_nan() || self.rescale_factor <= 0.0 {
            return Err(cfg_err("rescale_factor must be positive"));
        }
        // Real processors use 336–560 px tiles and at most a few dozen;
        // the bounds keep canvas arithmetic and buffers sane.
        if self.tile_size == 0
            || self.tile_size > 8192
            || self.max_tiles == 0
            || self.max_tiles > 64
        {
            return Err(cfg_err("tile size must be 1..=8192 and max tiles 1..=64"));
        }
        if self.patch_size == 0 || self.tile_size % self.patch_size != 0 {
            return Err(cfg_err("tile size must be a multiple of patch_size"));
        }
        if self.pixel_shuffle_ratio.is_nan()
            || self.pixel_shuffle_ratio <= 0.0
            || self.pixel_shuffle_ratio > 1.0
        {
            return Err(cfg_err("pixel_shuffle_ratio must be in (0, 1]"));
        }
        Ok(())
    }

    /// Llama 4: `<|patch|>` tokens per tile = (tile/patch)² · ratio².
    pub fn tokens_per_tile(&self) -> usize {
        let g = self.tile_size / self.patch_size;
        let down = (1.0 / self.pixel_shuffle_ratio).round() as usize;
        (g * g) / (down * down).max(1)
    }
}

/// Pads the resized image with black at the bottom/right to `canvas` and
/// cuts it into row-major tiles; calls `emit(tile_index, c, y, x, u8)` for
/// every tile pixel.
fn for_each_tile_pixel(
    img: &RgbImage,
    grid: (usize, usize),
    tile: usize,
    mut emit: impl FnMut(usize, usize, usize, usize, u8),
) {
    for ty in 0..grid.0 {
        for tx in 0..grid.1 {
            let t = ty * grid.1 + tx;
            for c in 0..3 {
                let plane = img.plane(c);
                for y in 0..tile {
                    let sy = ty * tile + y;
                    for x in 0..tile {
                        let sx = tx * tile + x;
                        let v = if sy < img.height && sx < img.width {
                            plane[sy * img.width + sx]
                        } else {
                            0
                        };
                        emit(t, c, y, x, v);
                    }
                }
            }
        }
    }
}

/// Output of the Mllama processor for one image.
#[derive(Clone, Debug)]
pub struct MllamaImage {
    /// [max_tiles, 3, tile, tile]; unused tile slots are exactly 0.
    pub pixel_values: Vec<f32>,
    /// 1 + index of the tile grid in [`mllama_aspect_ratios`].
    pub aspect_ratio_id: usize,
    /// 1 for used tile slots (slot 0 always).
    pub aspect_ratio_mask: Vec<u8>,
    pub num_tiles: usize,
    pub tile_grid: (usize, usize),
    pub canvas: (usize, usize),
    /// The resized image before padding.
    pub resized: RgbImage,
}

/// The Mllama tile grids (h, w) with h·w ≤ max, in HF's order.
pub fn mllama_aspect_ratios(max_tiles: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for a in 1..=max_tiles {
        for b in 1..=max_tiles {
            if a * b <= max_tiles {
                out.push((a, b));
            }
        }
    }
    out
}

/// Picks the canvas among `canvases`: the smallest upscale if any scale is
/// ≥ 1, else the largest downscale; ties go to the smallest area (first on
/// equal areas). `scale` computes min(ch/h, cw/w) in the caller's precision.
fn best_canvas<S: PartialOrd + Copy>(
    canvases: &[(usize, usize)],
    one: S,
    scale: impl Fn((usize, usize)) -> S,
) -> Option<usize> {
    let scales: Vec<S> = canvases.iter().map(|&c| scale(c)).collect();
    let pick = |up: bool| {
        scales
            .iter()
            .copied()
            .filter(|s| if up { *s >= one } else { *s < one })
            .reduce(|a, b| match (up, b < a) {
                (true, true) | (false, false) => b,
                _ => a,
            })
    };
    let selected = pick(true).or_else(|| pick(false))?;
    let mut best: Option<usize> = None;
    for (i, &c) in canvases.iter().enumerate() {
        if scales[i] == selected && best.is_none_or(|b| c.0 * c.1 < canvases[b].0 * canvases[b].1) {
            best = Some(i);
        }
    }
    best
}

/// Mllama's `get_image_size_fit_to_canvas` (float64).
fn mllama_fit_to_canvas(h: usize, w: usize, canvas: (usize, usize), tile: usize) -> (usize, usize) {
    // np.clip(x, lo, hi) = min(max(x, lo), hi).
    let target_w = w.max(tile).min(canvas.1);
    let target_h = h.max(tile).min(canvas.0);
    let scale_h = target_h as f64 / h as f64;
    let scale_w = target_w as f64 / w as f64;
    if scale_w < scale_h {
        let nh = ((h as f64 * scale_w).floor() as usize).max(1);
        (nh.min(target_h), target_w)
    } else {
        let nw = ((w as f64 * scale_h).floor() as usize).max(1);
        (target_h, nw.min(target_w))
    }
}

/// The fused rescale + normalise constants, as transformers builds them:
/// mean/rescale and std/rescale in f64, then f32.
fn fused_mean_std(cfg: &ProcessorConfig) -> ([f32; 3], [f32; 3]) {
    let inv = 1.0 / cfg.rescale_factor;
    let m = cfg.image_mean.map(|x| (f64::from(x) * inv) as f32);
    let s = cfg.image_std.map(|x| (f64::from(x) * inv) as f32);
    (m, s)
}

/// Runs the Mllama image processor on one RGB image.
pub fn mllama_preprocess(cfg: &ProcessorConfig, img: &RgbImage) -> Result<MllamaImage> {
    let tile = cfg.tile_size;
    let ratios = mllama_aspect_ratios(cfg.max_tiles);
    let canvases: Vec<(usize, usize)> = ratios.iter().map(|&(a, b)| (a * tile, b * tile)).collect();
    let (h, w) = (img.height, img.width);
    let idx = best_canvas(&canvases, 1.0f64, |(ch, cw)| {
        (ch as f64 / h as f64).min(cw as f64 / w as f64)
    })
    .ok_or_else(|| cfg_err("no tile canvas"))?;
    let canvas = canvases[idx];
    let grid = ratios[idx];
    let (nh, nw) = mllama_fit_to_canvas(h, w, canvas, tile);
    let resized = resize_bilinear_aa(img, nh, nw);
    let (mean, std) = fused_mean_std(cfg);
    let per_tile = 3 * tile * tile;
    let mut pixel_values = vec![0f32; cfg.max_tiles * per_tile];
    for_each_tile_pixel(&resized, grid, tile, |t, c, y, x, v| {
        pixel_values[t * per_tile + (c * tile + y) * tile + x] = (f32::from(v) - mean[c]) / std[c];
    });
    let num_tiles = grid.0 * grid.1;
    let mut aspect_ratio_mask = vec![0u8; cfg.max_tiles];
    aspect_ratio_mask
        .iter_mut()
        .take(num_tiles.max(1))
        .for_each(|m| *m = 1);
    Ok(MllamaImage {
        pixel_values,
        aspect_ratio_id: idx + 1,
        aspect_ratio_mask,
        num_tiles,
        tile_grid: grid,
        canvas,
        resized,
    })
}

/// Mllama's cross-attention mask for a token sequence: `[len][n_images][max_tiles]`
/// flattened, 1 where token i may attend to tile t of image k. Each image is
/// seen from its `<|image|>` token until the next one; consecutive image
/// tokens share the range that follows them.
pub fn mllama_cross_attention_mask(
    ids: &[u32],
    image_token: u32,
    num_tiles: &[usize],
    max_tiles: usize,
) -> Result<Vec<u8>> {
    let locs: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == image_token)
        .map(|(i, _)| i)
        .collect();
    if locs.len() != num_tiles.len() {
        return Err(VisionError::Prompt(format!(
            "{} image tokens in the prompt for {} images",
            locs.len(),
            num_tiles.len()
        )));
    }
    let n_img = locs.len();
    let mut ranges: Vec<(usize, usize)> = (0..n_img)
        .map(|k| {
            (
                locs[k],
                if k + 1 < n_img {
                    locs[k + 1]
                } else {
                    ids.len()
                },
            )
        })
        .collect();
    let mut last_end = ids.len();
    for r in ranges.iter_mut().rev() {
        if r.0 + 1 == r.1 {
            r.1 = last_end;
        }
        last_end = r.1;
    }
    let mut mask = vec![0u8; ids.len() * n_img * max_tiles];
    for (k, &(start, end)) in ranges.iter().enumerate() {
        for i in start..end {
            for t in 0..num_tiles[k].min(max_tiles) {
                mask[(i * n_img + k) * max_tiles + t] = 1;
            }
        }
    }
    Ok(mask)
}

/// Output of the Llama 4 processor for one image.
#[derive(Clone, Debug)]
pub struct Llama4Image {
    /// [n_tiles (+1 global), 3, tile, tile], bf16 values held as f32.
    pub pixel_values: Vec<f32>,
    /// Tiles (h, w) of the canvas.
    pub aspect_ratio: (usize, usize),
    /// Tiles including the global tile.
    pub n_tiles: usize,
    pub canvas: (usize, usize),
    pub resized: RgbImage,
    /// The global tile's resized image, when there is one.
    pub global: Option<RgbImage>,
}

/// Llama 4's candidate canvases in HF's order (grouped by aspect ratio in
/// first-seen order, for n = max..1 and factor pairs (a, n/a)).
pub fn llama4_resolutions(max_tiles: usize, tile: usize) -> Vec<(usize, usize)> {
    type Grid = (usize, usize);
    let mut groups: Vec<(Grid, Vec<Grid>)> = Vec::new();
    for n in (1..=max_tiles).rev() {
        for a in (1..=n).filter(|a| n % a == 0) {
            let (h, w) = (a, n / a);
            // Same ratio h/w ⇔ same reduced fraction.
            let g = gcd(h, w);
            let key = (h / g, w / g);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push((h, w)),
                None => groups.push((key, vec![(h, w)])),
            }
        }
    }
    groups
        .into_iter()
        .flat_map(|(_, v)| v)
        .map(|(h, w)| (h * tile, w * tile))
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A scale that torch computes either in float32 (from a 0-dim int64
/// tensor) or in float64 (from Python ints).
#[derive(Clone, Copy)]
enum Scale {
    F32(f32),
    F64(f64),
}

impl Scale {
    fn new(target: usize, orig: usize, tensor: bool) -> Scale {
        if tensor {
            Scale::F32(target as f32 / orig as f32)
        } else {
            Scale::F64(target as f64 / orig as f64)
        }
    }
    fn lt(self, other: Scale) -> bool {
        match (self, other) {
            (Scale::F64(a), Scale::F64(b)) => a < b,
            (Scale::F32(a), Scale::F64(b)) => a < b as f32,
            (Scale::F64(a), Scale::F32(b)) => (a as f32) < b,
            (Scale::F32(a), Scale::F32(b)) => a < b,
        }
    }
    fn floor_mul(self, x: usize) -> usize {
        match self {
            Scale::F32(s) => (x as f32 * s).floor() as usize,
            Scale::F64(s) => (x as f64 * s).floor() as usize,
        }
    }
}

/// Llama 4's resize target: upscaling stops at one tile, then
/// `get_max_res_without_distortion` with the float32 quirk for the
/// dimensions clamped to the canvas.
fn llama4_resize_target(
    h: usize,
    w: usize,
    canvas: (usize, usize),
    cfg: &ProcessorConfig,
) -> (usize, usize) {
    let (th, tw, th_tensor, tw_tensor) = if cfg.resize_to_max_canvas {
        (canvas.0, canvas.1, true, true)
    } else {
        let (mh, mw) = (h.max(cfg.tile_size), w.max(cfg.tile_size));
        // Python's min(a, b) keeps a (a plain int) unless b (the canvas, a
        // tensor element) is strictly smaller.
        (
            mh.min(canvas.0),
            mw.min(canvas.1),
            canvas.0 < mh,
            canvas.1 < mw,
        )
    };
    let sw = Scale::new(tw, w, tw_tensor);
    let sh = Scale::new(th, h, th_tensor);
    if sw.lt(sh) {
        (sw.floor_mul(h).min(th), tw)
    } else {
        (th, sh.floor_mul(w).min(tw))
    }
}

fn bf16_normalise(v: u8, mean: f32, std: f32, rescale: f32) -> f32 {
    let x = bf16::from_f32(bf16::from_f32(f32::from(v)).to_f32() * rescale).to_f32();
    let x = bf16::from_f32(x - mean).to_f32();
    bf16::from_f32(x / std).to_f32()
}

/// The canvas (height, width in pixels) Llama 4's processor resizes an
/// `h`×`w` image onto: a grid of whole tiles.
fn llama4_canvas(cfg: &ProcessorConfig, h: usize, w: usize) -> Result<(usize, usize)> {
    let canvases = llama4_resolutions(cfg.max_tiles, cfg.tile_size);
    let scale = |(ch, cw): (usize, usize)| (ch as f32 / h as f32).min(cw as f32 / w as f32);
    let idx = if cfg.resize_to_max_canvas {
        best_canvas_max(&canvases, scale)
    } else {
        best_canvas(&canvases, 1.0f32, scale)
    }
    .ok_or_else(|| cfg_err("no tile canvas"))?;
    Ok(canvases[idx])
}

/// The tile grid (rows, columns) of an `h`×`w` image in Llama 4's
/// processor: what its prompt expansion depends on, without resizing.
pub fn llama4_tile_grid(cfg: &ProcessorConfig, h: usize, w: usize) -> Result<(usize, usize)> {
    let canvas = llama4_canvas(cfg, h, w)?;
    Ok((canvas.0 / cfg.tile_size, canvas.1 / cfg.tile_size))
}

/// Runs the Llama 4 image processor on one RGB image.
pub fn llama4_preprocess(cfg: &ProcessorConfig, img: &RgbImage) -> Result<Llama4Image> {
    let tile = cfg.tile_size;
    let (h, w) = (img.height, img.width);
    let canvas = llama4_canvas(cfg, h, w)?;
    let grid = (canvas.0 / tile, canvas.1 / tile);
    let (nh, nw) = llama4_resize_target(h, w, canvas, cfg);
    let resized = resize_bilinear_aa(img, nh, nw);
    let rescale = cfg.rescale_factor as f32;
    let (mean, std) = (cfg.image_mean, cfg.image_std);
    let n_grid = grid.0 * grid.1;
    let global = (n_grid > 1).then(|| resize_bilinear_aa(img, tile, tile));
    let n_tiles = n_grid + usize::from(global.is_some());
    let per_tile = 3 * tile * tile;
    let mut pixel_values = vec![0f32; n_tiles * per_tile];
    for_each_tile_pixel(&resized, grid, tile, |t, c, y, x, v| {
        pixel_values[t * per_tile + (c * tile + y) * tile + x] =
            bf16_normalise(v, mean[c], std[c], rescale);
    });
    if let Some(g) = &global {
        for_each_tile_pixel(g, (1, 1), tile, |_, c, y, x, v| {
            pixel_values[n_grid * per_tile + (c * tile + y) * tile + x] =
                bf16_normalise(v, mean[c], std[c], rescale);
        });
    }
    Ok(Llama4Image {
        pixel_values,
        aspect_ratio: grid,
        n_tiles,
        canvas,
        resized,
        global,
    })
}

/// `resize_to_max_canvas`: the largest upscale, else the largest downscale.
fn best_canvas_max(
    canvases: &[(usize, usize)],
    scale: impl Fn((usize, usize)) -> f32,
) -> Option<usize> {
    let scales: Vec<f32> = canvases.iter().map(|&c| scale(c)).collect();
    let up = scales
        .iter()
        .copied()
        .filter(|&s| s >= 1.0)
        .reduce(f32::max);
    let selected = up.or_else(|| scales.iter().copied().filter(|&s| s < 1.0).reduce(f32::max))?;
    let mut best: Option<usize> = None;
    for (i, &c) in canvases.iter().enumerate() {
        if scales[i] == selected && best.is_none_or(|b| c.0 * c.1 < canvases[b].0 * canvases[b].1) {
            best = Some(i);
        }
    }
    best
}

/// The special tokens of Llama 4's image prompt.
#[derive(Clone, Copy, Debug)]
pub struct Llama4ImageTokens {
    pub image_start: u32,
    pub image_end: u32,
    pub image: u32,
    pub patch: u32,
    pub tile_x_separator: u32,
    pub tile_y_separator: u32,
}

impl Llama4ImageTokens {
    /// Looks the tokens up by name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<u32>) -> Result<Llama4ImageTokens> {
        let get = |name: &str| {
            lookup(name).ok_or_else(|| cfg_err(format!("tokenizer has no {name} token")))
        };
        Ok(Llama4ImageTokens {
            image_start: get("<|image_start|>")?,
            image_end: get("<|image_end|>")?,
            image: get("<|image|>")?,
            patch: get("<|patch|>")?,
            tile_x_separator: get("<|tile_x_separator|>")?,
            tile_y_separator: get("<|tile_y_separator|>")?,
        })
    }
}

/// Replaces each `<|image|>` token of `ids` by the image's expansion:
/// `<|image_start|>`, per tile row the tiles' `<|patch|>` runs separated by
/// `<|tile_x_separator|>` and closed by `<|tile_y_separator|>` (only with
/// more than one tile), then `<|image|>`, one more `<|patch|>` run and
/// `<|image_end|>`.
pub fn llama4_expand_image_tokens(
    ids: &[u32],
    tokens: &Llama4ImageTokens,
    images: &[(usize, usize)],
    patches_per_tile: usize,
) -> Result<Vec<u32>> {
    let n_img = ids.iter().filter(|&&t| t == tokens.image).count();
    if n_img != images.len() {
        return Err(VisionError::Prompt(format!(
            "{n_img} image tokens in the prompt for {} images",
            images.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut next = images.iter();
    for &t in ids {
        if t != tokens.image {
            out.push(t);
            continue;
        }
        let &(rh, rw) = next
            .next()
            .ok_or_else(|| VisionError::Prompt("image count".into()))?;
        out.push(tokens.image_start);
        if rh * rw > 1 {
            for _ in 0..rh {
                for xx in 0..rw {
                    out.extend(std::iter::repeat_n(tokens.patch, patches_per_tile));
                    if xx + 1 < rw {
                        out.push(tokens.tile_x_separator);
                    }
                }
                out.push(tokens.tile_y_separator);
            }
        }
        out.push(tokens.image);
        out.extend(std::iter::repeat_n(tokens.patch, patches_per_tile));
        out.push(tokens.image_end);
    }
    Ok(out)
}
