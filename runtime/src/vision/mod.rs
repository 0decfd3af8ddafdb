//! Image input for the vision models (Llama 3.2 Vision = mllama, Llama 4):
//! decoding, the Hugging Face image processors, and the vision towers.

pub mod error;
pub mod image;
pub mod input;
pub mod processor;
pub mod prompt;
pub mod resize;

pub use error::{Result, VisionError};
pub use image::{DEFAULT_MAX_PIXELS, RgbImage, decode_image, decode_image_capped};
pub use input::{IMAGE_MARKER, Vision, VisionPrompt, expand_image_prompt};
pub use processor::{
    Llama4Image, Llama4ImageTokens, MllamaImage, ProcessorConfig, ProcessorKind,
    llama4_expand_image_tokens, llama4_preprocess, mllama_cross_attention_mask, mllama_preprocess,
};
pub use resize::resize_bilinear_aa;
pub mod llama4;
pub mod mllama;
pub mod mmproj;
pub mod tensor;

pub use llama4::{Llama4Vision, Llama4VisionConfig, Llama4VisionOutput};
pub use mllama::{MllamaVision, MllamaVisionConfig, MllamaVisionOutput};
pub use mmproj::{MmprojFile, Projector, VisionTower, mmproj_tensor_name};
pub use prompt::{ImagePrompt, MllamaImagePrompt, llama4_image_prompt, mllama_image_prompt};
pub use tensor::{HfWeights, Tensor, TensorSource};
