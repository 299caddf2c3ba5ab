//! 8-bit RGB PNG images (quicklooks) with `tEXt` metadata, written atomically.
//!
//! ```
//! use skypipe_io::{png::write_png_rgb, Durability};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("map_I.png");
//! let rgb = vec![255u8; 4 * 2 * 3];
//! write_png_rgb(&path, 4, 2, &rgb, &[("UNIT", "K_CMB")], Durability::ProcessCrashOnly).unwrap();
//! assert!(path.is_file());
//! ```

use crate::{AtomicFile, Durability, IoError};
use std::path::{Path, PathBuf};

/// Why a PNG could not be written; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The pixel buffer does not hold `width × height × 3` bytes, or a dimension is zero.
    #[error("{path}: {width}×{height} RGB image needs {expected} bytes, got {found}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// Bytes expected (0 when a dimension is zero, which PNG forbids).
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// A `tEXt` keyword or value PNG cannot hold.
    #[error("{path}: text chunk '{keyword}': {message}")]
    Text {
        /// The file.
        path: PathBuf,
        /// The keyword.
        keyword: String,
        /// What is wrong with it.
        message: String,
    },
    /// The encoder failed.
    #[error("{path}: encoding PNG: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
    /// Creating, syncing or renaming the output failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Writes an 8-bit RGB image (`rgb`: rows from the top, 3 bytes per pixel) to `path` as PNG,
/// with one `tEXt` chunk per `(keyword, value)` in `text` (e.g. colour limits and units), through
/// an [`AtomicFile`] with the given durability.
///
/// Refuses a buffer of the wrong length, a zero dimension, and text PNG cannot hold: keywords
/// must be 1–79 Latin-1 characters without leading, trailing or double spaces, values Latin-1;
/// neither may contain NUL.
pub fn write_png_rgb(
    path: &Path,
    width: u32,
    height: u32,
    rgb: &[u8],
    text: &[(&str, &str)],
    durability: Durability,
) -> Result<(), PngError> {
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .unwrap_or(usize::MAX);
    if expected == 0 || rgb.len() != expected {
        return Err(PngError::Size {
            path: path.to_path_buf(),
            width,
            height,
            expected,
            found: rgb.len(),
        });
    }
    for (keyword, value) in text {
        check_text(keyword, value).map_err(|message| PngError::Text {
            path: path.to_path_buf(),
            keyword: (*keyword).into(),
            message,
        })?;
    }
    let encode_err = |source| PngError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let mut file = AtomicFile::create(path, durability)?;
    {
        let mut encoder = png::Encoder::new(&mut file, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, value) in text {
            encoder
                .add_text_chunk((*keyword).into(), (*value).into())
                .map_err(encode_err)?;
        }
        let mut writer = encoder.write_header().map_err(encode_err)?;
        writer.write_image_data(rgb).map_err(encode_err)?;
        writer.finish().map_err(encode_err)?;
    }
    file.commit()?;
    Ok(())
}

/// Checks a `tEXt` keyword and value against the PNG specification (§11.3.4.3).
fn check_text(keyword: &str, value: &str) -> Result<(), String> {
    let latin1 = |s: &str| s.chars().all(|c| c != '\0' && u32::from(c) <= 0xFF);
    let n = keyword.chars().count();
    if !(1..=79).contains(&n) {
        return Err(format!("keyword must be 1 to 79 characters, has {n}"));
    }
    if !latin1(keyword) || !latin1(value) {
        return Err("keyword and value must be Latin-1 without NUL".into());
    }
    if keyword.starts_with(' ') || keyword.ends_with(' ') || keyword.contains("  ") {
        return Err("keyword must not have leading, trailing or consecutive spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>, Vec<(String, String)>) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        reader.finish().unwrap();
        let text = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        (info, buf, text)
    }

    #[test]
    fn pixels_and_text_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q/ql.png");
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|k| (k * 37 % 256) as u8).collect();
        let text = [("MIN", "-3.5e-05"), ("MAX", "3.5e-05"), ("UNIT", "µK_CMB")];
        write_png_rgb(&path, w, h, &rgb, &text, Durability::Synced).unwrap();
        let (info, pixels, found) = decode(&path);
        assert_eq!((info.width, info.height), (w, h));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(pixels, rgb);
        let want: Vec<(String, String)> = text
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        assert_eq!(found, want);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn refusals_name_the_file_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let write = |w, h, rgb: &[u8], text: &[(&str, &str)]| {
            write_png_rgb(&path, w, h, rgb, text, Durability::ProcessCrashOnly)
                .unwrap_err()
                .to_string()
        };
        let e = write(4, 2, &[0; 23], &[]);
        assert!(
            e.contains("bad.png") && e.contains("24") && e.contains("23"),
            "{e}"
        );
        let e = write(0, 2, &[], &[]);
        assert!(e.contains("bad.png"), "{e}");
        let e = write(1, 1, &[0; 3], &[("", "x")]);
        assert!(e.contains("bad.png") && e.contains("1 to 79"), "{e}");
        let long = "K".repeat(80);
        let e = write(1, 1, &[0; 3], &[(long.as_str(), "x")]);
        assert!(e.contains("1 to 79"), "{e}");
        let e = write(1, 1, &[0; 3], &[("UNIT", "θ")]);
        assert!(e.contains("'UNIT'") && e.contains("Latin-1"), "{e}");
        let e = write(1, 1, &[0; 3], &[(" UNIT", "K")]);
        assert!(e.contains("spaces"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
