//! Image prompts: from a tokenized prompt and images to the token sequence
//! the text model runs and the embeddings that replace some of its inputs.

use super::error::{Result, VisionError};
use super::image::RgbImage;
use super::llama4::Llama4Vision;
use super::mllama::MllamaVision;
use super::processor::{
    Llama4ImageTokens, ProcessorConfig, llama4_expand_image_tokens, llama4_preprocess,
    mllama_cross_attention_mask, mllama_preprocess,
};

/// A Llama 4 prompt with its images encoded.
#[derive(Clone, Debug)]
pub struct ImagePrompt {
    /// The prompt after image token expansion.
    pub tokens: Vec<u32>,
    /// Indices of the `<|patch|>` tokens in `tokens`.
    pub embed_indices: Vec<usize>,
    /// `(embed_indices.len(), text_hidden)`: the image features, in order.
    pub embeds: Vec<f32>,
}

/// Expands the `<|image|>` tokens of `ids` (one per image, in order) and
/// encodes the images; their features replace the `<|patch|>` embeddings.
pub fn llama4_image_prompt(
    tower: &Llama4Vision,
    processor: &ProcessorConfig,
    special: &Llama4ImageTokens,
    ids: &[u32],
    images: &[RgbImage],
) -> Result<ImagePrompt> {
    let mut ratios = Vec::with_capacity(images.len());
    let mut embeds = Vec::new();
    for img in images {
        let p = llama4_preprocess(processor, img)?;
        let out = tower.encode(&p.pixel_values, p.n_tiles, &mut |_, _| {})?;
        ratios.push(p.aspect_ratio);
        embeds.extend_from_slice(&out.features);
    }
    let per_tile = tower.cfg.tokens_per_tile();
    if processor.tokens_per_tile() != per_tile {
        return Err(VisionError::Config(format!(
            "the processor counts {} <|patch|> tokens per tile, the tower makes {per_tile}",
            processor.tokens_per_tile()
        )));
    }
    let tokens = llama4_expand_image_tokens(ids, special, &ratios, per_tile)?;
    let embed_indices: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == special.patch)
        .map(|(i, _)| i)
        .collect();
    let hidden = tower.cfg.text_hidden_size;
    if embed_indices.len() * hidden != embeds.len() {
        return Err(VisionError::Prompt(format!(
            "{} <|patch|> tokens for {} image feature rows",
            embed_indices.len(),
            embeds.len() / hidden.max(1)
        )));
    }
    Ok(ImagePrompt {
        tokens,
        embed_indices,
        embeds,
    })
}

/// An mllama prompt with its images encoded: the tokens are unchanged (one
/// `<|image|>` per image); the images enter the text model as the keys and
/// values of its cross-attention layers.
#[derive(Clone, Debug)]
pub struct MllamaImagePrompt {
    pub tokens: Vec<u32>,
    /// `cross_attention_states` of all images, `(n_tiles · tokens_per_tile,
    /// text_hidden)`: each image's `max_tiles` tile slots in order.
    pub cross_states: Vec<f32>,
    /// Tile slots of all images (`images · max_tiles`).
    pub n_tiles: usize,
    /// `(tokens.len(), n_tiles)`: 1 where the token may see the tile.
    pub mask: Vec<u8>,
}

/// Encodes the images of an mllama prompt (`ids` holds one `image_token`
/// per image, in order) and makes its cross-attention mask.
pub fn mllama_image_prompt(
    tower: &MllamaVision,
    processor: &ProcessorConfig,
    image_token: u32,
    ids: &[u32],
    images: &[RgbImage],
) -> Result<MllamaImagePrompt> {
    if processor.max_tiles != tower.cfg.max_num_tiles {
        return Err(VisionError::Config(format!(
            "the processor makes {} tile slots, the tower takes {}",
            processor.max_tiles, tower.cfg.max_num_tiles
        )));
    }
    let mut cross_states = Vec::new();
    let mut num_tiles = Vec::with_capacity(images.len());
    for img in images {
        let p = mllama_preprocess(processor, img)?;
        let out = tower.encode(
            &p.pixel_values,
            p.aspect_ratio_id,
            &p.aspect_ratio_mask,
            &mut |_, _| {},
        )?;
        cross_states.extend_from_slice(&out.features);
        num_tiles.push(p.num_tiles);
    }
    let max_tiles = processor.max_tiles;
    let mask = mllama_cross_attention_mask(ids, image_token, &num_tiles, max_tiles)?;
    Ok(MllamaImagePrompt {
        tokens: ids.to_vec(),
        cross_states,
        n_tiles: images.len() * max_tiles,
        mask,
    })
}
