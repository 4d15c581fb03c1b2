//! Fashion-MNIST from the IDX files of the Debian package `dataset-fashion-mnist`.
//!
//! [`parse_idx`] reads the unsigned-byte IDX format (plain or gzip); [`FashionMnist`] pairs an
//! image file with its label file and hands out `tch` batches. Every malformed input is an
//! [`Error::Io`], never a panic: the files come from outside the crate.
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where `dataset-fashion-mnist` installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Overrides [`DEFAULT_DIR`] for [`FashionMnist::load`].
pub const DIR_ENV: &str = "FEATJND_FASHION_MNIST_DIR";

pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// File stems (without `.gz`) of the images and labels.
    fn stems(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// A parsed unsigned-byte IDX array: `data.len()` is the product of `dims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an IDX array of u8 (magic `0x0000_08_NN`, NN = number of dims), checking that the
/// payload length matches the dims exactly.
pub fn parse_idx(bytes: &[u8]) -> Result<Idx> {
    let bad = |why: String| Error::Io(format!("bad IDX data: {why}"));
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes, shorter than the 4-byte magic", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        return Err(bad(format!("magic {magic:#010x} is not an unsigned-byte IDX (0x000008NN)")));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad(format!("truncated header: {ndims} dims need {header} bytes, got {}", bytes.len())));
    }
    let dims: Vec<usize> = bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    // checked: a corrupt header must not overflow into a plausible length.
    let len = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = bytes.len() - header;
    if len != Some(payload) {
        return Err(bad(format!("dims {dims:?} need {len:?} bytes of data, file has {payload}")));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// Reads and parses an IDX file, gunzipping it if it starts with the gzip magic `1f 8b`.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let ctx = |e: String| Error::Io(format!("{}: {e}", path.display()));
    let raw = std::fs::read(path).map_err(|e| ctx(e.to_string()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| ctx(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|e| ctx(e.to_string()))
}

/// One split of Fashion-MNIST: `images` is `n × rows × cols` row-major u8, `labels` is `n` classes.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
}

impl FashionMnist {
    /// Loads from `$FEATJND_FASHION_MNIST_DIR`, else [`DEFAULT_DIR`].
    pub fn load(split: Split) -> Result<Self> {
        let dir = std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_DIR.into());
        Self::load_from(&dir, split)
    }

    /// Loads `split` from `dir`, taking `<stem>.gz` or else the plain `<stem>`.
    pub fn load_from(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let (img_stem, lbl_stem) = split.stems();
        let images = read_idx(&find(dir, img_stem)?)?;
        let labels = read_idx(&find(dir, lbl_stem)?)?;
        Self::from_idx(images, labels)
    }

    /// Pairs parsed image (`N×rows×cols`) and label (`N`) arrays, checking they agree.
    pub fn from_idx(images: Idx, labels: Idx) -> Result<Self> {
        let err = |why: String| Err(Error::Io(format!("Fashion-MNIST: {why}")));
        let &[n, rows, cols] = images.dims.as_slice() else {
            return err(format!("images must have 3 dims (N×rows×cols), got {:?}", images.dims));
        };
        let &[n_labels] = labels.dims.as_slice() else {
            return err(format!("labels must have 1 dim, got {:?}", labels.dims));
        };
        if n != n_labels {
            return err(format!("{n} images but {n_labels} labels"));
        }
        if let Some(i) = labels.data.iter().position(|&l| l as usize >= CLASS_NAMES.len()) {
            return err(format!("label[{i}] = {} is not a class in 0..10", labels.data[i]));
        }
        Ok(Self { images: images.data, labels: labels.data, n, rows, cols })
    }

    /// Image `i` as `rows × cols` bytes. Panics if `i >= n`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let px = self.rows * self.cols;
        &self.images[i * px..(i + 1) * px]
    }

    /// The images at `indices` as f32 `[B, 1, rows, cols]` scaled to [0, 1] (pixel / 255, no
    /// mean/std normalisation: models that want it do it themselves), and their labels as i64 `[B]`.
    /// Both on the CPU. Panics if an index is `>= n`, like slice indexing.
    pub fn batch(&self, indices: &[usize]) -> (tch::Tensor, tch::Tensor) {
        let px = self.rows * self.cols;
        let mut x = Vec::with_capacity(indices.len() * px);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
            y.push(self.labels[i] as i64);
        }
        let shape = [indices.len() as i64, 1, self.rows as i64, self.cols as i64];
        (tch::Tensor::from_slice(&x).reshape(shape), tch::Tensor::from_slice(&y))
    }
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    if gz.is_file() {
        return Ok(gz);
    }
    if plain.is_file() {
        return Ok(plain);
    }
    Err(Error::Io(format!(
        "Fashion-MNIST file {} not found (nor {}): run scripts/setup.sh, which installs the \
         Debian package dataset-fashion-mnist, or set {DIR_ENV} to a directory holding the IDX files",
        gz.display(),
        plain.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_generically() {
        let mut b = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend(0..6u8);
        let idx = parse_idx(&b).unwrap();
        assert_eq!(idx.dims, vec![2, 3]);
        assert_eq!(idx.data, (0..6).collect::<Vec<u8>>());
        // huge dims overflow usize: an error, not a panic or a bogus length.
        let b = [0, 0, 8, 4, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(parse_idx(&b).is_err());
    }
}
