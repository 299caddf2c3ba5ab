//! Row-major images and mask planes, the data every kernel works on.

/// A row-major image of `width × height` values: pixel (x, y) is `data[y * width + x]`.
///
/// Pixel centres are at integer coordinates (x = 0 is the centre of the first column), as in
/// the FITS convention minus one.
#[derive(Debug, Clone, PartialEq)]
pub struct Image<T> {
    /// Number of columns.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
    /// The values, row after row.
    pub data: Vec<T>,
}

impl<T: Copy> Image<T> {
    /// An image filled with `value`.
    pub fn filled(width: usize, height: usize, value: T) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// Wraps existing data.
    ///
    /// # Panics
    /// If `data.len() != width * height` (a programming error: I/O validates shapes).
    pub fn from_vec(width: usize, height: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), width * height, "image data length");
        Self {
            width,
            height,
            data,
        }
    }

    /// The value at (x, y).
    #[inline]
    pub fn get(&self, x: usize, y: usize) -> T {
        self.data[y * self.width + x]
    }

    /// Sets the value at (x, y).
    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: T) {
        self.data[y * self.width + x] = v;
    }

    /// Number of pixels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the image has no pixels.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Bits of the mask plane (u32 per pixel; 0 = good). Written as the `MP_*` header keywords of
/// the mask HDU so that readers need not hard-code them.
pub mod mask {
    /// Pixel at or above the saturation level (and its immediate neighbours).
    pub const SAT: u32 = 1;
    /// Bad pixel (not finite in the input, or zero/negative flat).
    pub const BAD: u32 = 2;
    /// Cosmic ray hit (and the one-pixel ring around it); the value was interpolated.
    pub const CR: u32 = 4;
    /// Within a detected footprint.
    pub const DETECTED: u32 = 8;
    /// Within `edge` pixels of the CCD boundary.
    pub const EDGE: u32 = 16;
    /// Every bit with its name, for the header.
    pub const NAMES: [(&str, u32); 5] = [
        ("SAT", SAT),
        ("BAD", BAD),
        ("CR", CR),
        ("DETECTED", DETECTED),
        ("EDGE", EDGE),
    ];
}
