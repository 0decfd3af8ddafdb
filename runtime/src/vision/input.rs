//! Images in a text model's prompt, for either family: [`Vision`] is an
//! mmproj's tower and processor, checked against the text model it is used
//! with; [`VisionPrompt`] is a tokenized prompt with its images encoded,
//! which [`VisionPrompt::prefill`] runs.

use crate::model::{Arch, Config, EmbeddingOverride, Model, ModelError, State};
use crate::tokenizer::Tokenizer;

use super::error::{Result, VisionError};
use super::image::RgbImage;
use super::mmproj::{MmprojFile, Projector, VisionTower};
use super::processor::{
    Llama4ImageTokens, ProcessorConfig, llama4_expand_image_tokens, llama4_tile_grid,
};
use super::prompt::{ImagePrompt, MllamaImagePrompt, llama4_image_prompt, mllama_image_prompt};

/// The marker of an image in a prompt's text (both families).
pub const IMAGE_MARKER: &str = "<|image|>";

/// A vision tower and its image processor, fitted to a text model.
pub struct Vision {
    tower: VisionTower,
    processor: ProcessorConfig,
}

impl Vision {
    /// Loads the tower of `file` and checks that it fits the text model
    /// `text`: the same family (`llama4` with a Llama 4 projector, `mllama`
    /// with an mllama one) and features as wide as the model.
    pub fn new(file: &MmprojFile, text: &Config) -> Result<Vision> {
        let tower = file.load_tower()?;
        let processor = file.processor()?;
        let (want, hidden, name) = match &tower {
            VisionTower::Llama4(t) => (Arch::Llama4, t.cfg.text_hidden_size, "llama4"),
            VisionTower::Mllama(t) => (Arch::Mllama, t.cfg.text_hidden_size, "mllama"),
        };
        if text.arch != want {
            return Err(VisionError::Mismatch(match text.arch {
                Arch::Llama => "the model is text-only (arch llama): it takes no images".into(),
                a => format!("a {name} projector does not fit a {} text model", a.name()),
            }));
        }
        if hidden != text.dim {
            return Err(VisionError::Mismatch(format!(
                "the projector makes features of width {hidden}, the text model's width is {}",
                text.dim
            )));
        }
        Ok(Vision { tower, processor })
    }

    /// The tower.
    pub fn tower(&self) -> &VisionTower {
        &self.tower
    }

    /// Encodes `images` for the prompt `ids`, which holds one
    /// [`IMAGE_MARKER`] token per image (Llama 4 expands each to its tiles'
    /// tokens, as the Hugging Face processor does; mllama keeps it).
    pub fn prompt(
        &self,
        tok: &Tokenizer,
        ids: &[u32],
        images: &[RgbImage],
    ) -> Result<VisionPrompt> {
        match &self.tower {
            VisionTower::Llama4(t) => {
                let special = Llama4ImageTokens::from_lookup(|s| tok.token_id(s))?;
                let p = llama4_image_prompt(t, &self.processor, &special, ids, images)?;
                Ok(VisionPrompt::Llama4(p))
            }
            VisionTower::Mllama(t) => {
                let image = tok.token_id(IMAGE_MARKER).ok_or_else(|| {
                    VisionError::Prompt(format!("the tokenizer has no {IMAGE_MARKER} token"))
                })?;
                let p = mllama_image_prompt(t, &self.processor, image, ids, images)?;
                Ok(VisionPrompt::Mllama(p))
            }
        }
    }
}

/// The prompt `ids` (one [`IMAGE_MARKER`] token per image) as the text
/// model runs it, the markers expanded as the Hugging Face processor does
/// (Llama 4: each into its tiles' tokens, which depend only on the image's
/// size; mllama: unchanged), without encoding anything: what the
/// processor's `input_ids` are.
pub fn expand_image_prompt(
    file: &MmprojFile,
    tok: &Tokenizer,
    ids: &[u32],
    images: &[RgbImage],
) -> Result<Vec<u32>> {
    let processor = file.processor()?;
    match file.projector() {
        Projector::Llama4 => {
            let special = Llama4ImageTokens::from_lookup(|s| tok.token_id(s))?;
            let grids = images
                .iter()
                .map(|i| llama4_tile_grid(&processor, i.height, i.width))
                .collect::<Result<Vec<_>>>()?;
            llama4_expand_image_tokens(ids, &special, &grids, processor.tokens_per_tile())
        }
        Projector::Mllama => {
            let image = tok.token_id(IMAGE_MARKER).ok_or_else(|| {
                VisionError::Prompt(format!("the tokenizer has no {IMAGE_MARKER} token"))
            })?;
            let n = ids.iter().filter(|&&t| t == image).count();
            if n != images.len() {
                return Err(VisionError::Prompt(format!(
                    "{n} image tokens in the prompt for {} images",
                    images.len()
                )));
            }
            Ok(ids.to_vec())
        }
    }
}

/// A prompt with its images encoded.
#[derive(Clone, Debug)]
pub enum VisionPrompt {
    /// Features replace the `<|patch|>` embeddings.
    Llama4(ImagePrompt),
    /// Features are the cross-attention layers' keys and values.
    Mllama(MllamaImagePrompt),
}

impl VisionPrompt {
    /// The tokens the text model runs.
    pub fn tokens(&self) -> &[u32] {
        match self {
            VisionPrompt::Llama4(p) => &p.tokens,
            VisionPrompt::Mllama(p) => &p.tokens,
        }
    }

    /// Runs the prompt after what `state` holds and returns the logits of
    /// its last token. An mllama state keeps the image (replacing any
    /// earlier one) for the tokens that follow.
    pub fn prefill<'s>(
        &self,
        model: &Model<'_>,
        state: &'s mut State,
    ) -> std::result::Result<&'s [f32], ModelError> {
        match self {
            VisionPrompt::Llama4(p) => {
                let over = EmbeddingOverride {
                    indices: &p.embed_indices,
                    rows: &p.embeds,
                };
                model.forward_with_embeddings(state, &p.tokens, over)
            }
            VisionPrompt::Mllama(p) => {
                model.set_image_context(state, &p.cross_states, p.n_tiles)?;
                model.forward_with_cross_mask(state, &p.tokens, &p.mask)
            }
        }
    }
}
