//! Feature files: `.npy` (v1/v2/v3 headers, little-endian, C order) and `.safetensors`.
//!
//! Reading gives a [`Feature`] (f32/f16/bf16, raw little-endian bytes) or, for any stored type
//! including the `i8`/`i16` symbols, a CPU `tch::Tensor`. Every malformed, truncated or unsupported
//! file is an [`Error::Io`] naming the file and what is wrong; nothing here panics on bad input.
use std::borrow::Cow;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::element::Dtype;
use crate::error::{Error, Result};

// Raw bytes are passed straight to and from libtorch: both sides must be little-endian.
#[cfg(target_endian = "big")]
compile_error!("featjnd's file IO assumes a little-endian host");

/// Element types a file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    F32,
    F16,
    Bf16,
    I8,
    I16,
}

impl Stored {
    pub fn size(self) -> usize {
        match self {
            Stored::F32 => 4,
            Stored::F16 | Stored::Bf16 | Stored::I16 => 2,
            Stored::I8 => 1,
        }
    }
    pub fn kind(self) -> Kind {
        match self {
            Stored::F32 => Kind::Float,
            Stored::F16 => Kind::Half,
            Stored::Bf16 => Kind::BFloat16,
            Stored::I8 => Kind::Int8,
            Stored::I16 => Kind::Int16,
        }
    }
    fn from_kind(k: Kind) -> Result<Self> {
        Ok(match k {
            Kind::Float => Stored::F32,
            Kind::Half => Stored::F16,
            Kind::BFloat16 => Stored::Bf16,
            Kind::Int8 => Stored::I8,
            Kind::Int16 => Stored::I16,
            other => return Err(Error::Io(format!("cannot save a {other:?} tensor (f32, f16, bf16, i8, i16 only)"))),
        })
    }
    fn float(self) -> Option<Dtype> {
        match self {
            Stored::F32 => Some(Dtype::F32),
            Stored::F16 => Some(Dtype::F16),
            Stored::Bf16 => Some(Dtype::Bf16),
            _ => None,
        }
    }
    /// The npy `descr` (None for bf16: npy has no such type).
    fn npy_descr(self) -> Option<&'static str> {
        match self {
            Stored::F32 => Some("<f4"),
            Stored::F16 => Some("<f2"),
            Stored::I8 => Some("|i1"),
            Stored::I16 => Some("<i2"),
            Stored::Bf16 => None,
        }
    }
    fn from_npy_descr(d: &str) -> Option<Self> {
        // numpy writes '|' for one-byte types and '<' otherwise; '=' is native (little-endian here).
        let (order, ty) = (d.get(..1).unwrap_or(""), d.get(1..).unwrap_or(""));
        match (order, ty) {
            ("<" | "=", "f4") => Some(Stored::F32),
            ("<" | "=", "f2") => Some(Stored::F16),
            ("|" | "<" | "=", "i1") => Some(Stored::I8),
            ("<" | "=", "i2") => Some(Stored::I16),
            _ => None,
        }
    }
    fn st_dtype(self) -> safetensors::Dtype {
        match self {
            Stored::F32 => safetensors::Dtype::F32,
            Stored::F16 => safetensors::Dtype::F16,
            Stored::Bf16 => safetensors::Dtype::BF16,
            Stored::I8 => safetensors::Dtype::I8,
            Stored::I16 => safetensors::Dtype::I16,
        }
    }
    fn from_st_dtype(d: safetensors::Dtype) -> Option<Self> {
        Some(match d {
            safetensors::Dtype::F32 => Stored::F32,
            safetensors::Dtype::F16 => Stored::F16,
            safetensors::Dtype::BF16 => Stored::Bf16,
            safetensors::Dtype::I8 => Stored::I8,
            safetensors::Dtype::I16 => Stored::I16,
            _ => return None,
        })
    }
}

/// An array as read from a file: shape, element type and raw little-endian bytes (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub stored: Stored,
    pub data: Vec<u8>,
}

impl Array {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// A CPU tensor holding a copy of the data.
    pub fn to_tensor(&self) -> Result<Tensor> {
        tensor_of(&self.shape, self.stored.kind(), &self.data)
    }
}

/// A loaded feature (or tolerance map): a floating-point [`Array`].
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    /// Little-endian element bytes in C order.
    pub data: Vec<u8>,
}

impl Feature {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// A CPU tensor (f32, f16 or bf16) holding a copy of the data.
    pub fn to_tensor(&self) -> Result<Tensor> {
        tensor_of(&self.shape, self.dtype.to_kind(), &self.data)
    }
}

fn tensor_of(shape: &[usize], kind: Kind, data: &[u8]) -> Result<Tensor> {
    let size: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
    Ok(Tensor::f_from_data_size(data, &size, kind)?)
}

fn io_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {what}", path.display()))
}

/// How a file is read or written, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npy,
    Safetensors,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => Err(io_err(path, "unknown file type (expected .npy or .safetensors)")),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_err(path, format!("cannot read: {e}")))
}

/// Reads any supported array. `name` picks a tensor in a safetensors file (default: the only one);
/// it must be `None` for `.npy`.
pub fn load_array(path: &Path, name: Option<&str>) -> Result<Array> {
    match Format::of(path)? {
        Format::Npy => {
            if let Some(n) = name {
                return Err(io_err(path, format!("an .npy file holds one array: cannot pick tensor '{n}'")));
            }
            parse_npy(&read_file(path)?).map_err(|e| io_err(path, e))
        }
        Format::Safetensors => parse_safetensors(&read_file(path)?, name).map_err(|e| io_err(path, e)),
    }
}

/// Reads a floating-point feature (f32, f16 or bf16).
pub fn load_feature(path: &Path, name: Option<&str>) -> Result<Feature> {
    let a = load_array(path, name)?;
    let dtype = a.stored.float().ok_or_else(|| io_err(path, format!("holds {:?} data; a feature must be f32, f16 or bf16", a.stored)))?;
    Ok(Feature { shape: a.shape, dtype, data: a.data })
}

/// Reads any supported array as a CPU tensor.
pub fn load_tensor(path: &Path, name: Option<&str>) -> Result<Tensor> {
    load_array(path, name)?.to_tensor()
}

/// Saves a tensor (any device; f32, f16, bf16, i8 or i16) by extension. The safetensors tensor is
/// named after the file stem. npy has no bf16, so a bf16 tensor goes to `.npy` as f32 (exact).
pub fn save_tensor(path: &Path, t: &Tensor) -> Result<()> {
    let fmt = Format::of(path)?;
    let mut t = t.f_to_device(Device::Cpu)?;
    if fmt == Format::Npy && t.kind() == Kind::BFloat16 {
        t = t.f_to_kind(Kind::Float)?;
    }
    let stored = Stored::from_kind(t.kind())?;
    let t = t.f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
    let numel = t.numel();
    let mut data = vec![0u8; numel * stored.size()];
    t.f_copy_data_u8(&mut data, numel)?;
    save_array(path, &Array { shape, stored, data })
}

/// Writes an array by extension (bf16 cannot go to `.npy`: convert first, see [`save_tensor`]).
pub fn save_array(path: &Path, a: &Array) -> Result<()> {
    if a.data.len() != a.numel() * a.stored.size() {
        return Err(io_err(path, format!("{} data bytes for shape {:?}", a.data.len(), a.shape)));
    }
    let bytes = match Format::of(path)? {
        Format::Npy => npy_bytes(a).map_err(|e| io_err(path, e))?,
        Format::Safetensors => {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("data");
            let view = safetensors::tensor::TensorView::new(a.stored.st_dtype(), a.shape.clone(), &a.data).map_err(|e| io_err(path, e))?;
            safetensors::serialize([(name, view)], None).map_err(|e| io_err(path, e))?
        }
    };
    std::fs::write(path, bytes).map_err(|e| io_err(path, format!("cannot write: {e}")))
}

/// Writes `|i1` / `<i2` / `<f4` slices (symbols, steps) without going through a tensor.
pub fn save_npy_f32(path: &Path, shape: &[usize], v: &[f32]) -> Result<()> {
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    save_array(path, &Array { shape: shape.to_vec(), stored: Stored::F32, data })
}
pub fn save_npy_i8(path: &Path, shape: &[usize], v: &[i8]) -> Result<()> {
    let data = v.iter().map(|&x| x as u8).collect();
    save_array(path, &Array { shape: shape.to_vec(), stored: Stored::I8, data })
}
pub fn save_npy_i16(path: &Path, shape: &[usize], v: &[i16]) -> Result<()> {
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    save_array(path, &Array { shape: shape.to_vec(), stored: Stored::I16, data })
}

// ---------- npy ----------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Parses a whole `.npy` file (errors are plain strings; the caller adds the path).
pub fn parse_npy(b: &[u8]) -> std::result::Result<Array, String> {
    if b.len() < 10 || &b[..6] != NPY_MAGIC {
        return Err("not an .npy file (bad magic or too short)".into());
    }
    let (major, minor) = (b[6], b[7]);
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 => {
            if b.len() < 12 {
                return Err("truncated header".into());
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        _ => return Err(format!("unsupported .npy version {major}.{minor}")),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= b.len()).ok_or("truncated header")?;
    let header = std::str::from_utf8(&b[start..end]).map_err(|_| "header is not text")?;
    let h = parse_header(header)?;
    if h.fortran_order {
        return Err("Fortran-order arrays are not supported (save a C-contiguous array: np.ascontiguousarray)".into());
    }
    let stored = Stored::from_npy_descr(&h.descr)
        .ok_or_else(|| format!("unsupported dtype '{}' (featjnd reads little-endian <f4, <f2, |i1, <i2)", h.descr))?;
    let numel = h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let want = numel.checked_mul(stored.size()).ok_or("shape overflows")?;
    let data = &b[end..];
    if data.len() < want {
        return Err(format!("truncated: shape {:?} needs {want} data bytes, file has {}", h.shape, data.len()));
    }
    if data.len() > want {
        return Err(format!("corrupted: {} bytes after the {want} data bytes of shape {:?}", data.len() - want, h.shape));
    }
    Ok(Array { shape: h.shape, stored, data: data.to_vec() })
}

struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(s: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = Parser { s: s.as_bytes(), i: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => descr = Some(p.string().map_err(|_| "unsupported dtype: structured or non-string 'descr'".to_string())?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected header key '{other}'")),
        }
        p.ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(NpyHeader { descr, fortran_order, shape }),
        _ => Err("header lacks 'descr', 'fortran_order' or 'shape'".into()),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.s.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed header: expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.ws();
        let q = *self.s.get(self.i).ok_or("malformed header: unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("malformed header: expected a string at byte {}", self.i));
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q).ok_or("malformed header: unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, v) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err("malformed header: fortran_order is not True/False".into())
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            let num = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            // A trailing 'L' is what Python 2 wrote for long ints.
            if self.s.get(self.i) == Some(&b'L') {
                self.i += 1;
            }
            dims.push(num.parse().map_err(|_| format!("malformed header: bad shape entry at byte {start}"))?);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// Serialises an array as npy: v1.0 if the header fits, else v2.0; header padded to 64 bytes.
fn npy_bytes(a: &Array) -> std::result::Result<Vec<u8>, String> {
    let descr = a.stored.npy_descr().ok_or("npy has no bf16: convert to f32 first")?;
    let shape = match a.shape.as_slice() {
        [d] => format!("({d},)"),
        s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let v1 = h.len() + 11 <= u16::MAX as usize;
    let pre = if v1 { 10 } else { 12 };
    let total = (pre + h.len() + 1).next_multiple_of(64);
    h.push_str(&" ".repeat(total - pre - h.len() - 1));
    h.push('\n');
    let mut out = Vec::with_capacity(total + a.data.len());
    out.extend_from_slice(NPY_MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&a.data);
    Ok(out)
}

// ---------- safetensors ----------

/// Parses safetensors bytes; `name` picks a tensor (public for the fuzz targets).
pub fn parse_safetensors(b: &[u8], name: Option<&str>) -> std::result::Result<Array, String> {
    let st = safetensors::SafeTensors::deserialize(b).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut names = st.names();
    names.sort();
    let name = match (name, names.as_slice()) {
        (Some(n), _) => n,
        (None, [only]) => only,
        (None, []) => return Err("holds no tensors".into()),
        (None, many) => return Err(format!("holds {} tensors ({}): pick one with FILE.safetensors:NAME", many.len(), many.join(", "))),
    };
    let view = st.tensor(name).map_err(|_| format!("no tensor '{name}' (has: {})", names.join(", ")))?;
    let stored = Stored::from_st_dtype(view.dtype())
        .ok_or_else(|| format!("tensor '{name}' is {:?} (featjnd reads F32, F16, BF16, I8, I16)", view.dtype()))?;
    Ok(Array { shape: view.shape().to_vec(), stored, data: Cow::from(view.data()).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("featjnd-io-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn npy_f32_round_trip() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0]).reshape([2, 3]);
        let p = tmp("a.npy");
        save_tensor(&p, &t).unwrap();
        let f = load_feature(&p, None).unwrap();
        assert_eq!((f.shape.clone(), f.dtype), (vec![2, 3], Dtype::F32));
        assert!(f.to_tensor().unwrap().equal(&t));
        // Header is 64-byte aligned, as numpy writes it.
        let b = std::fs::read(&p).unwrap();
        assert_eq!((b.len() - 24) % 64, 0);
    }

    #[test]
    fn npy_f16_and_ints_round_trip() {
        let t = Tensor::from_slice(&[0.5f32, -1.0, 65504.0, 1e-4]).to_kind(Kind::Half);
        let p = tmp("h.npy");
        save_tensor(&p, &t).unwrap();
        let f = load_feature(&p, None).unwrap();
        assert_eq!((f.shape.clone(), f.dtype), (vec![4], Dtype::F16));
        assert!(f.to_tensor().unwrap().equal(&t));

        let p = tmp("s.npy");
        save_npy_i8(&p, &[2, 2], &[-127, 0, 5, 127]).unwrap();
        let s = load_tensor(&p, None).unwrap();
        assert_eq!(Vec::<i8>::try_from(&s.flatten(0, -1)).unwrap(), vec![-127, 0, 5, 127]);
        assert!(load_feature(&p, None).is_err());
        let p = tmp("s16.npy");
        save_npy_i16(&p, &[3], &[-300, 0, 32767]).unwrap();
        assert_eq!(Vec::<i16>::try_from(&load_tensor(&p, None).unwrap()).unwrap(), vec![-300, 0, 32767]);
    }

    #[test]
    fn npy_v2_header_and_scalar_shapes() {
        let h = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 1), }\n";
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&(h.len() as u32).to_le_bytes());
        b.extend_from_slice(h);
        b.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
        let a = parse_npy(&b).unwrap();
        assert_eq!((a.shape, a.stored), (vec![2, 1], Stored::F32));
        let a = Array { shape: vec![], stored: Stored::F16, data: vec![0, 60] };
        assert_eq!(parse_npy(&npy_bytes(&a).unwrap()).unwrap(), a);
    }

    #[test]
    fn bf16_goes_to_npy_as_f32() {
        let t = Tensor::from_slice(&[1.0f32, 2.5]).to_kind(Kind::BFloat16);
        let p = tmp("b.npy");
        save_tensor(&p, &t).unwrap();
        let f = load_feature(&p, None).unwrap();
        assert_eq!(f.dtype, Dtype::F32);
        assert!(f.to_tensor().unwrap().equal(&t.to_kind(Kind::Float)));
    }

    #[test]
    fn safetensors_round_trip() {
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            let t = Tensor::from_slice(&[1.0f32, -0.5, 3.0, 4.0, 5.0, 6.0]).reshape([1, 2, 3]).to_kind(kind);
            let p = tmp("feat.safetensors");
            save_tensor(&p, &t).unwrap();
            let f = load_feature(&p, None).unwrap();
            assert_eq!(f.shape, vec![1, 2, 3]);
            assert!(f.to_tensor().unwrap().equal(&t));
            assert!(load_feature(&p, Some("feat")).is_ok());
            let e = load_feature(&p, Some("nope")).unwrap_err().to_string();
            assert!(e.contains("no tensor 'nope'"), "{e}");
        }
    }

    #[test]
    fn bad_files_are_errors() {
        let t = Tensor::from_slice(&[1.0f32; 8]);
        let p = tmp("t.npy");
        save_tensor(&p, &t).unwrap();
        let full = std::fs::read(&p).unwrap();
        // Every truncation is an error, never a panic.
        for n in 0..full.len() {
            std::fs::write(&p, &full[..n]).unwrap();
            assert!(load_feature(&p, None).is_err(), "truncated at {n}");
        }
        let swap = |from: &[u8], to: &[u8]| {
            let i = full.windows(from.len()).position(|w| w == from).unwrap();
            [&full[..i], to, &full[i + from.len()..]].concat()
        };
        std::fs::write(&p, swap(b"False", b"True ")).unwrap();
        assert!(load_feature(&p, None).unwrap_err().to_string().contains("Fortran"));
        std::fs::write(&p, swap(b"<f4", b">f4")).unwrap();
        assert!(load_feature(&p, None).unwrap_err().to_string().contains("unsupported dtype"));
        let p = tmp("t.safetensors");
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{not json").unwrap();
        assert!(load_feature(&p, None).is_err());
        assert!(load_feature(&tmp("missing.npy"), None).unwrap_err().to_string().contains("cannot read"));
    }
}
