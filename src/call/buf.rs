//! The framework-free view of one array an op reads or writes, and the aliasing rule of contract
//! §7.3. Every surface (tch tensors, the C ABI's raw pointers, Python's DLPack arrays) converts
//! its arrays to [`Buf`]s and nothing else: sizes, element types, memory, alignment and overlap
//! are then checked once, here and in the op's `validate`.
use std::fmt;

use crate::element::Dtype;
use crate::error::{Error, Result};

/// Element types of the arrays the ops touch: the three feature dtypes, the symbol types, and
/// the 64-bit counters of histograms and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
    I8,
    I16,
    U64,
    I64,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::I8 => 1,
            Elem::F16 | Elem::Bf16 | Elem::I16 => 2,
            Elem::F32 => 4,
            Elem::U64 | Elem::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
            Elem::I8 => "i8",
            Elem::I16 => "i16",
            Elem::U64 => "u64",
            Elem::I64 => "i64",
        }
    }

    /// The feature dtype, for the three float types.
    pub fn dtype(self) -> Option<Dtype> {
        match self {
            Elem::F32 => Some(Dtype::F32),
            Elem::F16 => Some(Dtype::F16),
            Elem::Bf16 => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

impl From<Dtype> for Elem {
    fn from(d: Dtype) -> Elem {
        match d {
            Dtype::F32 => Elem::F32,
            Dtype::F16 => Elem::F16,
            Dtype::Bf16 => Elem::Bf16,
        }
    }
}

/// Where an array lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    Host,
    /// CUDA device memory of the device with this ordinal.
    Cuda(usize),
}

impl fmt::Display for Mem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mem::Host => write!(f, "host memory"),
            Mem::Cuda(o) => write!(f, "CUDA device {o}"),
        }
    }
}

/// One array of a call: its name (as error messages say it), address, element count and type,
/// memory, and whether the caller lets the op write it. Addresses only: a `Buf` gives no access
/// by itself, which is why it is `Send` and a validated call can run without a GIL or a lock.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub name: &'static str,
    addr: usize,
    len: usize,
    elem: Elem,
    mem: Mem,
    writable: bool,
}

impl Buf {
    /// Describes an array.
    ///
    /// # Safety
    /// For as long as any call validated from this `Buf` lives, `addr` (non-null) points to `len`
    /// initialised elements of `elem` in `mem` (at most `isize::MAX` bytes) that stay allocated;
    /// nothing else writes them while an op runs, and if `writable`, nothing else reads them
    /// either and the op may write any bit pattern of `elem` there. Alignment is *not* required:
    /// the op's `validate` checks it.
    pub unsafe fn new(name: &'static str, addr: usize, len: usize, elem: Elem, mem: Mem, writable: bool) -> Buf {
        Buf { name, addr, len, elem, mem, writable }
    }

    pub fn addr(&self) -> usize {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn elem(&self) -> Elem {
        self.elem
    }
    pub fn mem(&self) -> Mem {
        self.mem
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
    pub fn bytes(&self) -> usize {
        self.len * self.elem.size()
    }

    /// The first `n` elements (a caller's statistics array may be longer than a call needs), or
    /// `Error::Shape` when there are fewer.
    pub fn head(self, n: usize) -> Result<Buf> {
        if self.len < n {
            return Err(Error::Shape(format!("{} has {} values, the call needs {n}", self.name, self.len)));
        }
        Ok(Buf { len: n, ..self })
    }

    /// The same array under another name (a batch item, an in-place output).
    pub fn named(self, name: &'static str) -> Buf {
        Buf { name, ..self }
    }

    /// Same address and length: the in-place pairing of §7.3.
    pub fn same_array(&self, o: &Buf) -> bool {
        self.mem == o.mem && self.addr == o.addr && self.bytes() == o.bytes()
    }

    fn overlaps(&self, o: &Buf) -> bool {
        let (a, b) = (self.addr as u128, o.addr as u128);
        // Address 0 is an absent (null) array, never an overlap.
        self.mem == o.mem
            && a != 0
            && b != 0
            && self.bytes() > 0
            && o.bytes() > 0
            && a < b + o.bytes() as u128
            && b < a + self.bytes() as u128
    }

    /// An input (or output) of `elem`, `len` elements, in `mem`: the shape, type, memory and
    /// alignment checks every array of every op goes through.
    pub fn expect(&self, elem: Elem, len: usize, mem: Mem) -> Result<()> {
        if self.mem != mem {
            return Err(Error::MixedDevices(format!("{} is in {}, x in {mem}", self.name, self.mem)));
        }
        if self.elem != elem || self.len != len {
            return Err(Error::Shape(format!(
                "{} must be {len} values of {} (got {} of {})",
                self.name,
                elem.name(),
                self.len,
                self.elem.name()
            )));
        }
        if !self.addr.is_multiple_of(elem.size()) {
            return Err(Error::Align(format!("{} ({:#x}) is not aligned to {} bytes", self.name, self.addr, elem.size())));
        }
        Ok(())
    }

    /// [`Buf::expect`] for an output, which must also be writable.
    pub fn expect_out(&self, elem: Elem, len: usize, mem: Mem) -> Result<()> {
        self.expect(elem, len, mem)?;
        if !self.writable {
            return Err(Error::Arg(format!("{} is read-only", self.name)));
        }
        Ok(())
    }

    /// The feature dtype of a float array (f32, f16, bf16), or `Error::Dtype` naming the array.
    pub fn float_dtype(&self) -> Result<Dtype> {
        self.elem.dtype().ok_or_else(|| Error::Dtype(format!("{} is {} (featjnd takes f32, f16 or bf16)", self.name, self.elem.name())))
    }

    /// `T` per-token f32 values (token tolerances, RMS values, caps): f32 (`Arg`), at least one
    /// (`Empty(what)`), `len` values where given (`Shape`), aligned.
    pub fn token_values(&self, what: &'static str, len: Option<usize>) -> Result<()> {
        if self.elem != Elem::F32 {
            return Err(Error::Arg(format!("{} must be f32, got {}", self.name, self.elem.name())));
        }
        if self.is_empty() {
            return Err(Error::Empty(what));
        }
        if let Some(n) = len.filter(|&n| n != self.len) {
            return Err(Error::Shape(format!("{} has {} values for {n} tokens", self.name, self.len)));
        }
        self.expect(Elem::F32, self.len, self.mem)
    }

    /// The host executor's precondition: `Error::MixedDevices` unless the array is host memory.
    pub fn on_host(&self) -> Result<()> {
        if self.mem != Mem::Host {
            return Err(Error::MixedDevices(format!("{} is in {}; this executor runs on the host", self.name, self.mem)));
        }
        Ok(())
    }

    /// The array as a slice.
    ///
    /// # Safety
    /// Host memory, `T` is the Rust type of `elem`, and the call this `Buf` belongs to was
    /// validated (alignment, length) with no writer of this array.
    pub(crate) unsafe fn slice<'a, T>(&self) -> &'a [T] {
        debug_assert!(self.mem == Mem::Host && size_of::<T>() == self.elem.size());
        // SAFETY: by `Buf::new`'s contract and this fn's: live, initialised, aligned, `len` values.
        unsafe { std::slice::from_raw_parts(self.addr as *const T, self.len) }
    }

    /// The array as a mutable slice.
    ///
    /// # Safety
    /// As [`Buf::slice`], and the array is writable and no other slice of it is live.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut<'a, T>(&self) -> &'a mut [T] {
        debug_assert!(self.mem == Mem::Host && self.writable && size_of::<T>() == self.elem.size());
        // SAFETY: by `Buf::new`'s contract (writable, exclusive) and this fn's.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, self.len) }
    }
}

/// The aliasing rule of contract §7.3, checked before anything is written: no output may overlap
/// an input or another output, except `in_place` = (output, input) when they are the very same
/// array. Inputs may overlap each other (they are only read).
pub fn no_overlap(inputs: &[Buf], outputs: &[Buf], in_place: Option<(&str, &str)>) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        for other in inputs.iter().chain(&outputs[..i]) {
            if !o.overlaps(other) {
                continue;
            }
            if o.same_array(other) && in_place == Some((o.name, other.name)) {
                continue;
            }
            let allowed = match in_place {
                Some((out, inp)) => format!(" (only {out} may be {inp} itself, for in-place work)"),
                None => String::new(),
            };
            return Err(Error::Arg(format!(
                "{} overlaps {} in memory: outputs must not overlap the inputs or each other{allowed}",
                o.name, other.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(name: &'static str, addr: usize, len: usize) -> Buf {
        // SAFETY: never dereferenced (only the checks run).
        unsafe { Buf::new(name, addr, len, Elem::F32, Mem::Host, true) }
    }

    #[test]
    fn overlap_is_by_byte_range_and_memory() {
        let (x, y) = (buf("x", 4096, 4), buf("y", 4096 + 12, 4));
        assert!(no_overlap(&[x], &[y], None).unwrap_err().to_string().contains("y overlaps x"));
        let z = buf("z", 4096 + 16, 4);
        no_overlap(&[x], &[z], None).unwrap();
        // SAFETY: never dereferenced.
        let dev = unsafe { Buf::new("d", 4096, 4, Elem::F32, Mem::Cuda(0), true) };
        no_overlap(&[x], &[dev], None).unwrap();
    }

    #[test]
    fn in_place_allows_only_the_same_array() {
        let x = buf("x", 4096, 4);
        no_overlap(&[x], &[x.named("recon")], Some(("recon", "x"))).unwrap();
        let shifted = buf("recon", 4100, 4);
        assert!(no_overlap(&[x], &[shifted], Some(("recon", "x"))).is_err());
        // Outputs against each other; inputs may overlap each other; no wrap-around at the top.
        assert!(no_overlap(&[], &[buf("a", 0x10, 4), buf("b", 0x18, 4)], None).is_err());
        no_overlap(&[x, buf("y", 4096, 4)], &[], None).unwrap();
        assert!(no_overlap(&[buf("x", usize::MAX - 8, 2)], &[buf("a", usize::MAX - 4, 1)], None).is_err());
    }

    #[test]
    fn expect_names_the_first_wrong_property() {
        let b = buf("steps", 4098, 3);
        assert!(matches!(b.expect(Elem::F32, 3, Mem::Cuda(0)), Err(Error::MixedDevices(_))));
        assert!(matches!(b.expect(Elem::F32, 4, Mem::Host), Err(Error::Shape(_))));
        assert!(matches!(b.expect(Elem::F32, 3, Mem::Host), Err(Error::Align(_))));
        // SAFETY: never dereferenced.
        let ro = unsafe { Buf::new("out", 4096, 3, Elem::F32, Mem::Host, false) };
        assert!(ro.expect_out(Elem::F32, 3, Mem::Host).unwrap_err().to_string().contains("read-only"));
    }
}
