//! Arrays from Python, zero-copy.
//!
//! Every array goes through DLPack first (`__dlpack__`, consumed and owned by dlpark, so the
//! producer's deleter runs exactly once). Two numpy cases DLPack cannot carry fall back to numpy's
//! array interface (`__array_interface__`): read-only arrays under numpy 1.x (its DLPack export
//! refuses them) and `ml_dtypes.bfloat16` arrays (numpy exports only built-in dtypes). Both paths
//! give the same [`Array`]: an address, a shape, an element kind, a device and a read-only flag,
//! plus an owner that keeps the memory alive as long as the `Array` lives. Nothing is copied: a
//! non-contiguous array is refused.
use dlpark::ffi::{DLDataTypeCode, DLDeviceType, DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION};
use dlpark::python::ImportedDlpack;
use dlpark::DlpackFlags;
use featjnd_kernels::call::{self, Buf, Mem};
use featjnd_kernels::{Dtype, Error};
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::Fail;

/// Element kinds the bindings read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    F16,
    Bf16,
    I8,
    I16,
    /// The statistics of the sync-free calls.
    I64,
}

impl Kind {
    pub fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::F16 | Kind::Bf16 | Kind::I16 => 2,
            Kind::I8 => 1,
            Kind::I64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::F32 => "float32",
            Kind::F16 => "float16",
            Kind::Bf16 => "bfloat16",
            Kind::I8 => "int8",
            Kind::I16 => "int16",
            Kind::I64 => "int64",
        }
    }
    /// The feature dtype, for the three float kinds.
    pub fn dtype(self) -> Option<Dtype> {
        match self {
            Kind::F32 => Some(Dtype::F32),
            Kind::F16 => Some(Dtype::F16),
            Kind::Bf16 => Some(Dtype::Bf16),
            Kind::I8 | Kind::I16 | Kind::I64 => None,
        }
    }
}

/// Where an array lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dev::Cpu => write!(f, "cpu"),
            Dev::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What keeps an array's memory alive.
enum Owner {
    /// The consumed DLPack tensor; dropping it calls the producer's deleter.
    Dlpack(#[allow(dead_code)] ImportedDlpack),
    /// The numpy array itself (array-interface path).
    Object(#[allow(dead_code)] Py<PyAny>),
}

/// A dense, row-major array borrowed from Python.
pub struct Array {
    /// The argument's name, for messages.
    pub name: &'static str,
    /// Address of element 0 (DLPack's data pointer plus its byte offset).
    pub addr: usize,
    pub shape: Vec<usize>,
    pub kind: Kind,
    pub dev: Dev,
    pub readonly: bool,
    _owner: Owner,
}

impl Array {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The array as the core's view (`featjnd_kernels::call`), for one call.
    pub fn buf(&self) -> Buf {
        let elem = match self.kind {
            Kind::F32 => call::Elem::F32,
            Kind::F16 => call::Elem::F16,
            Kind::Bf16 => call::Elem::Bf16,
            Kind::I8 => call::Elem::I8,
            Kind::I16 => call::Elem::I16,
            Kind::I64 => call::Elem::I64,
        };
        let mem = match self.dev {
            Dev::Cpu => Mem::Host,
            Dev::Cuda(o) => Mem::Cuda(o.max(0) as usize),
        };
        // SAFETY: the owner keeps `numel` elements alive at `addr` while `self` lives, which is
        // the whole call; the package's contract (as numpy's and torch's ops) is that nothing else
        // writes a call's arrays while it runs; the producer's read-only flag is kept.
        unsafe { Buf::new(self.name, self.addr, self.numel(), elem, mem, !self.readonly) }
    }

    /// The feature dtype (f32, f16 or bf16), or `Error::Dtype`.
    pub fn float_dtype(&self) -> Result<Dtype, Error> {
        self.kind
            .dtype()
            .ok_or_else(|| Error::Dtype(format!("{} is {} (featjnd takes float32, float16 or bfloat16)", self.name, self.kind.name())))
    }
}

/// Row-major compact? `strides` in units of `unit` (1 for DLPack's element strides, the item
/// size for numpy's byte strides). Dimensions of size 1 may have any stride.
fn compact(shape: &[usize], strides: Option<&[i64]>, unit: i64) -> bool {
    let Some(strides) = strides else { return true };
    if strides.len() != shape.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut want = unit;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != want {
            return false;
        }
        want = want.saturating_mul(d as i64);
    }
    true
}

fn kind_of(code: DLDataTypeCode, bits: u8, lanes: u16) -> Option<Kind> {
    if lanes != 1 {
        return None;
    }
    match (code, bits) {
        (DLDataTypeCode::FLOAT, 32) => Some(Kind::F32),
        (DLDataTypeCode::FLOAT, 16) => Some(Kind::F16),
        (DLDataTypeCode::BFLOAT, 16) => Some(Kind::Bf16),
        (DLDataTypeCode::INT, 8) => Some(Kind::I8),
        (DLDataTypeCode::INT, 16) => Some(Kind::I16),
        (DLDataTypeCode::INT, 64) => Some(Kind::I64),
        _ => None,
    }
}

/// A DLPack dtype's name, for messages.
fn dl_name(code: DLDataTypeCode, bits: u8, lanes: u16) -> String {
    let base = match code.0 {
        0 => "int",
        1 => "uint",
        2 => "float",
        4 => "bfloat",
        5 => "complex",
        6 => "bool",
        _ => return format!("DLPack dtype code {} ({bits} bits, {lanes} lanes)", code.0),
    };
    if lanes == 1 {
        format!("{base}{bits}")
    } else {
        format!("{base}{bits}x{lanes}")
    }
}

fn short_type(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// `obj.__dlpack__(...)`: first with `max_version` (versioned capsules carry the read-only flag),
/// then without it for producers that predate it (numpy 1.x, torch < 2.4).
fn call_dlpack<'py>(obj: &Bound<'py, PyAny>, stream: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let kwargs = PyDict::new(py);
    if let Some(s) = stream {
        kwargs.set_item("stream", s)?;
    }
    let versioned = kwargs.copy()?;
    versioned.set_item("max_version", PyTuple::new(py, [DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION])?)?;
    match obj.call_method("__dlpack__", (), Some(&versioned)) {
        Ok(c) => Ok(c),
        Err(e) if e.is_instance_of::<PyTypeError>(py) => obj.call_method("__dlpack__", (), Some(&kwargs)),
        Err(e) => Err(e),
    }
}

/// Imports `obj` (any DLPack producer; numpy arrays also through the array interface).
/// `stream` (0 = the legacy default stream) is the consumer stream passed to a CUDA producer's
/// `__dlpack__`, which orders the array's pending work before it (DLPack's rules: 1 stands for
/// the legacy default stream there).
pub fn import(obj: &Bound<'_, PyAny>, name: &'static str, stream: usize) -> Result<Array, Fail> {
    let py = obj.py();
    let has = |attr: &str| obj.hasattr(attr).unwrap_or(false);
    if has("__dlpack__") {
        // Only a CUDA producer gets a stream (DLPack: CPU producers take None).
        let on_cuda = match obj.call_method0("__dlpack_device__") {
            Ok(d) => d.extract::<(i32, i32)>().map(|(t, _)| t == 2).unwrap_or(false),
            Err(_) => false,
        };
        let consumer = if stream == 0 { 1 } else { stream };
        let stream_arg = on_cuda.then(|| pyo3::types::PyInt::new(py, consumer).into_any());
        match call_dlpack(obj, stream_arg.as_ref()) {
            Ok(capsule) => return from_capsule(&capsule, name),
            Err(e) if e.is_instance_of::<PyBufferError>(py) && has("__array_interface__") => {}
            Err(e) => {
                return Err(Error::Arg(format!("{name} ({}) cannot be shared through DLPack: {}", short_type(obj), e.value(py))).into());
            }
        }
    }
    if has("__array_interface__") {
        return from_array_interface(obj, name);
    }
    Err(Error::Arg(format!("{name} must be a numpy array, a torch tensor or another DLPack array, got {}", short_type(obj))).into())
}

fn from_capsule(capsule: &Bound<'_, PyAny>, name: &'static str) -> Result<Array, Fail> {
    let imported = dlpark::python::from_dlpack(capsule.as_borrowed(), None, None)?;
    let readonly = imported.flags().contains(DlpackFlags::READ_ONLY);
    let t = imported.validate().map_err(|e| Error::Arg(format!("{name}: invalid DLPack tensor: {e}")))?;
    let dt = t.dtype();
    let kind = kind_of(dt.code, dt.bits, dt.lanes).ok_or_else(|| {
        Error::Dtype(format!("{name} is {}; featjnd takes float32, float16 or bfloat16", dl_name(dt.code, dt.bits, dt.lanes)))
    })?;
    let device = t.device();
    let dev = match device.device_type {
        DLDeviceType::CPU | DLDeviceType::CUDAHOST => Dev::Cpu,
        DLDeviceType::CUDA => Dev::Cuda(device.device_id),
        other => return Err(Error::Arg(format!("{name} lives on DLPack device type {} (featjnd runs on CPU and CUDA)", other.0)).into()),
    };
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect(); // validated >= 0
    if !compact(&shape, t.strides(), 1) {
        return Err(Error::NonContiguous(name).into());
    }
    let addr = (t.data_ptr() as usize).wrapping_add(t.byte_offset() as usize);
    Ok(Array { name, addr, shape, kind, dev, readonly, _owner: Owner::Dlpack(imported) })
}

fn from_array_interface(obj: &Bound<'_, PyAny>, name: &'static str) -> Result<Array, Fail> {
    let ai = obj.getattr("__array_interface__")?;
    let typestr: String = ai.get_item("typestr")?.extract()?;
    // ml_dtypes' bfloat16 is typestr '<V2': its dtype name says what it is.
    let dname: Option<String> = obj.getattr("dtype").and_then(|d| d.getattr("name")).and_then(|n| n.extract()).ok();
    let big_endian = typestr.starts_with('>') && !typestr.ends_with('1');
    let kind = match (dname.as_deref(), typestr.get(1..).unwrap_or("")) {
        _ if big_endian => None,
        (Some("bfloat16"), _) => Some(Kind::Bf16),
        (_, "f4") => Some(Kind::F32),
        (_, "f2") => Some(Kind::F16),
        (_, "i1") => Some(Kind::I8),
        (_, "i2") => Some(Kind::I16),
        (_, "i8") => Some(Kind::I64),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Dtype(format!("{name} is {} ({typestr}); featjnd takes float32, float16 or bfloat16", dname.as_deref().unwrap_or("?")))
    })?;
    let (ptr, readonly): (usize, bool) = ai
        .get_item("data")?
        .extract()
        .map_err(|_| Error::Arg(format!("{name}: __array_interface__ without a (pointer, read-only) data pair")))?;
    let shape: Vec<usize> = ai.get_item("shape")?.extract()?;
    let strides: Option<Vec<i64>> = ai.get_item("strides").ok().and_then(|s| s.extract().ok());
    if !compact(&shape, strides.as_deref(), kind.size() as i64) {
        return Err(Error::NonContiguous(name).into());
    }
    Ok(Array { name, addr: ptr, shape, kind, dev: Dev::Cpu, readonly, _owner: Owner::Object(obj.clone().unbind()) })
}

/// The one device of a call's arrays (CPU, or one CUDA device), or `Error::MixedDevices`.
pub fn device_of(arrays: &[&Array]) -> Result<Dev, Error> {
    let d = arrays.first().map_or(Dev::Cpu, |a| a.dev);
    match arrays.iter().find(|a| a.dev != d) {
        None => Ok(d),
        Some(b) => Err(Error::MixedDevices(format!("{} is on {}, {} on {}", arrays[0].name, d, b.name, b.dev))),
    }
}
