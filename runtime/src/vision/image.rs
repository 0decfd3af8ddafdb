//! PNG and JPEG decoding to 8-bit RGB, with a pixel cap checked from the
//! header before any pixel is decoded.

use std::io::Cursor;

use super::error::{Result, VisionError};

/// The default pixel cap: 50 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// An 8-bit RGB image, channel planes first (CHW): `data[c*h*w + y*w + x]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// From interleaved RGB rows (HWC), the layout decoders produce.
    pub fn from_hwc(width: usize, height: usize, hwc: &[u8]) -> Result<RgbImage> {
        let n = width.checked_mul(height).ok_or(VisionError::Empty)?;
        if n == 0 {
            return Err(VisionError::Empty);
        }
        if hwc.len() != n * 3 {
            return Err(VisionError::Config(format!(
                "RGB buffer of {} bytes for {width}x{height}",
                hwc.len()
            )));
        }
        let mut data = vec![0u8; n * 3];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            data[i] = px[0];
            data[n + i] = px[1];
            data[2 * n + i] = px[2];
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    /// One channel plane.
    pub fn plane(&self, c: usize) -> &[u8] {
        let n = self.width * self.height;
        &self.data[c * n..(c + 1) * n]
    }
}

/// Decodes PNG or JPEG bytes (sniffed from the signature) to RGB with the
/// default pixel cap.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    decode_image_capped(bytes, DEFAULT_MAX_PIXELS)
}

/// Decodes with an explicit cap on width·height.
pub fn decode_image_capped(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, max_pixels)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, max_pixels)
    } else {
        Err(VisionError::UnknownFormat)
    }
}

fn check_size(width: u64, height: u64, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(VisionError::Empty);
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(VisionError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

fn png_err(e: png::DecodingError) -> VisionError {
    VisionError::Decode {
        format: "PNG",
        detail: e.to_string(),
    }
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Palette and low bit depths expand to 8 bits; 16-bit samples keep
    // their high byte.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let info = decoder.read_header_info().map_err(png_err)?;
    check_size(u64::from(info.width), u64::from(info.height), max_pixels)?;
    // The cap above already bounds the frame; the decoder's own allocation
    // limit must not be lower than what the cap allows (RGBA, 8 bits).
    let limit = usize::try_from(max_pixels.saturating_mul(8)).unwrap_or(usize::MAX);
    decoder.set_limits(png::Limits { bytes: limit });
    let mut reader = decoder.read_info().map_err(png_err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| VisionError::Decode {
            format: "PNG",
            detail: "frame too large".into(),
        })?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(png_err)?;
    let (w, h) = (out.width as usize, out.height as usize);
    let stride = out.line_size;
    let channels = out.color_type.samples();
    let mut hwc = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &buf[y * stride..y * stride + w * channels];
        for px in row.chunks_exact(channels) {
            match out.color_type {
                // PIL's convert("RGB") drops alpha without compositing.
                png::ColorType::Rgb | png::ColorType::Rgba => hwc.extend_from_slice(&px[..3]),
                png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
                    hwc.extend_from_slice(&[px[0], px[0], px[0]])
                }
                png::ColorType::Indexed => {
                    return Err(VisionError::Decode {
                        format: "PNG",
                        detail: "palette not expanded".into(),
                    });
                }
            }
        }
    }
    RgbImage::from_hwc(w, h, &hwc)
}

fn jpeg_err(e: zune_jpeg::errors::DecodeErrors) -> VisionError {
    VisionError::Decode {
        format: "JPEG",
        detail: format!("{e:?}"),
    }
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(true);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(jpeg_err)?;
    let info = decoder.info().ok_or_else(|| VisionError::Decode {
        format: "JPEG",
        detail: "no frame header".into(),
    })?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check_size(w as u64, h as u64, max_pixels)?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| VisionError::Decode {
            format: "JPEG",
            detail: "frame too large".into(),
        })?;
    if size != w * h * 3 {
        return Err(VisionError::Decode {
            format: "JPEG",
            detail: format!("decoder output of {size} bytes for {w}x{h} RGB"),
        });
    }
    let mut hwc = vec![0u8; size];
    decoder.decode_into(&mut hwc).map_err(jpeg_err)?;
    RgbImage::from_hwc(w, h, &hwc)
}
