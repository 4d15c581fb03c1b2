//! `featjnd._featjnd`: the extension module under the Python package `featjnd`.
//!
//! A thin layer over the kernel library's slice API (`featjnd_kernels::{cpu, steps, philox,
//! rate, codec}`), built without libtorch. The pure-Python package (`python/featjnd/__init__.py`) parses
//! arguments, allocates outputs in the caller's framework (numpy or torch) and calls the
//! functions here, which
//! * import every array zero-copy ([`array`]: DLPack, or numpy's array interface where numpy's
//!   DLPack export cannot carry the array) and refuse non-contiguous ones;
//! * check dtypes, sizes and that no output overlaps an input (the contract's §7.3), then run the
//!   op with the GIL released (`Python::detach`);
//! * turn every `featjnd_kernels::Error` into a `featjnd.Error` subclass (a `ValueError`) carrying
//!   the contract's message and, for bad elements, `.index` and `.value`;
//! * catch panics at the boundary: none reaches Python as a `PanicException`.
use std::panic::AssertUnwindSafe;

use featjnd_kernels::call::{
    AllocateArgs, CappedArgs, CappedMeasuredArgs, CapsArgs, Cuda, EncodeArgs, Executor, MeasuredArgs, NoiseArgs, PerturbArgs, QuantizeArgs,
    QuantizeReport, TokenStat, TokenStatsArgs,
};
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::geom::{Bits, FeatureShape, Layout, NoiseKind, Reduce, Strategy, TokenGrid};
use featjnd_kernels::{codec, philox, Dtype, Error};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};

mod array;
mod sync_free;
use array::{device_of, import, Array, Dev, Kind};

/// The exception classes (`featjnd.Error` and its subclasses).
mod exc {
    use pyo3::create_exception;
    use pyo3::exceptions::PyValueError;

    create_exception!(
        featjnd,
        Error,
        PyValueError,
        "Base class of every featjnd error (a ValueError). `.kind` names the contract's error variant (docs/contract.md §7)."
    );

    /// One subclass of `Error` per variant of the contract's error (its docstring second).
    macro_rules! subclasses {
        ($($name:ident: $doc:literal,)*) => {
            $(create_exception!(featjnd, $name, Error, $doc);)*
        };
    }

    subclasses! {
        ShapeError: "Wrong rank for the layout, sizes that differ, or an output of the wrong size.",
        DtypeError: "A dtype other than float32/float16/bfloat16, or J's dtype differs from x's in perturb.",
        DeviceError: "Inputs or outputs on different devices.",
        NonContiguousError: "A non-contiguous array (featjnd never copies: call .contiguous() / np.ascontiguousarray first).",
        PatchError: "The patch size does not divide H and W.",
        EmptyError: "An array with no elements, no token tolerances or no samples.",
        BudgetError: "A budget D that is not finite and > 0.",
        NrmseError: "An NRMSE r that is not finite and >= 0.",
        JndError: "An element of J (or of the token tolerances) not finite or <= 0: `.index` (flat) and `.value`.",
        NonFiniteError: "A NaN or infinity in x: `.index` (flat) and `.value`.",
        ArgError: "An invalid argument: patch 0, a bad step, overlapping buffers, a bad option name, ...",
        UnreachableError: "The measured budget cannot be matched (`.budget`).",
        ResultOverflowError: "A perturbation whose result would not be finite in the output dtype.",
        CudaError: "The CUDA path is unavailable, or a CUDA/NVRTC call failed.",
        InternalError: "A bug in featjnd (a caught Rust panic): please report it.",
    }
}
use exc::*;

/// A failure inside a binding: a kernel-library error or a Python one.
pub enum Fail {
    Kernel(Error),
    Py(PyErr),
}
impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Kernel(e)
    }
}
impl From<PyErr> for Fail {
    fn from(e: PyErr) -> Self {
        Fail::Py(e)
    }
}

type R<T> = Result<T, Fail>;

/// The Python exception of a kernel error, with `.kind` and the variant's fields as attributes.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let (err, kind) = match &e {
        Error::Shape(_) => (ShapeError::new_err(msg), "Shape"),
        Error::Dtype(_) => (DtypeError::new_err(msg), "Dtype"),
        Error::MixedDevices(_) => (DeviceError::new_err(msg), "MixedDevices"),
        Error::NonContiguous(_) => (NonContiguousError::new_err(msg), "NonContiguous"),
        Error::Patch { .. } => (PatchError::new_err(msg), "Patch"),
        Error::Empty(_) => (EmptyError::new_err(msg), "Empty"),
        Error::Budget(_) => (BudgetError::new_err(msg), "Budget"),
        Error::Nrmse(_) => (NrmseError::new_err(msg), "Nrmse"),
        Error::Jnd { .. } => (JndError::new_err(msg), "Jnd"),
        Error::NonFinite { .. } => (NonFiniteError::new_err(msg), "NonFinite"),
        Error::Arg(_) => (ArgError::new_err(msg), "Arg"),
        Error::Align(_) => (ArgError::new_err(msg), "Align"),
        Error::Unreachable { .. } => (UnreachableError::new_err(msg), "Unreachable"),
        Error::Overflow(_) => (ResultOverflowError::new_err(msg), "Overflow"),
        Error::CudaUnavailable(_) => (CudaError::new_err(msg), "CudaUnavailable"),
        Error::Cuda(_) => (CudaError::new_err(msg), "Cuda"),
        Error::Nvrtc { .. } => (CudaError::new_err(msg), "Nvrtc"),
        _ => (exc::Error::new_err(msg), "Other"),
    };
    // Attributes are a convenience: a failure to set one must not hide the error itself.
    let v = err.value(py);
    let _ = v.setattr("kind", kind);
    match e {
        Error::Jnd { index, value } | Error::NonFinite { index, value } => {
            let _ = v.setattr("index", index);
            let _ = v.setattr("value", value as f64);
        }
        Error::Unreachable { budget, .. } => {
            let _ = v.setattr("budget", budget);
        }
        _ => {}
    }
    err
}

/// Runs a binding: kernel errors become `featjnd` exceptions, and a panic (a bug) becomes
/// `featjnd.InternalError` instead of unwinding into Python.
fn guard<T>(py: Python<'_>, f: impl FnOnce() -> R<T>) -> PyResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Fail::Kernel(e))) => Err(to_py(py, e)),
        Ok(Err(Fail::Py(e))) => Err(e),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(InternalError::new_err(format!("internal error in featjnd (a Rust panic: {what}); please report it")))
        }
    }
}

fn parse_layout(s: &str) -> Result<Layout, Error> {
    match s.to_ascii_lowercase().as_str() {
        "nchw" => Ok(Layout::Nchw),
        "ntc" => Ok(Layout::Ntc),
        _ => Err(Error::Arg(format!("layout must be 'nchw' or 'ntc', got {s:?}"))),
    }
}

fn parse_reduce(s: &str) -> Result<Reduce, Error> {
    match s.to_ascii_lowercase().as_str() {
        "mean" => Ok(Reduce::Mean),
        "rms" => Ok(Reduce::Rms),
        "min" => Ok(Reduce::Min),
        _ => Err(Error::Arg(format!("reduce must be 'mean', 'rms' or 'min', got {s:?}"))),
    }
}

fn parse_strategy(s: &str, seed: u64) -> Result<Strategy, Error> {
    match s.to_ascii_lowercase().as_str() {
        "uniform" => Ok(Strategy::Uniform),
        "jnd" => Ok(Strategy::Jnd),
        "permuted" => Ok(Strategy::Permuted { seed }),
        _ => Err(Error::Arg(format!("strategy must be 'jnd', 'uniform' or 'permuted', got {s:?}"))),
    }
}

fn parse_noise(s: &str) -> Result<NoiseKind, Error> {
    match s.to_ascii_lowercase().as_str() {
        "gaussian" => Ok(NoiseKind::Gaussian),
        "uniform" => Ok(NoiseKind::Uniform),
        _ => Err(Error::Arg(format!("noise must be 'gaussian' or 'uniform', got {s:?}"))),
    }
}

fn parse_bits(b: u32) -> Result<Bits, Error> {
    Bits::from_code(b)
}

fn token_grid(shape: &[usize], layout: Layout, patch: usize) -> Result<TokenGrid, Error> {
    let sizes: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    TokenGrid::new(FeatureShape::from_sizes(layout, &sizes)?, patch)
}

fn check_same_shape(a: &Array, b: &Array) -> Result<(), Error> {
    if a.shape != b.shape {
        return Err(Error::Shape(format!("{} is {:?}, {} is {:?}", a.name, a.shape, b.name, b.shape)));
    }
    Ok(())
}

/// Steps and token tolerances are f32 vectors.
fn f32_vector(a: &Array, err: impl Fn(String) -> Error) -> Result<(), Error> {
    if a.kind != Kind::F32 || a.shape.len() != 1 {
        return Err(err(format!("{} must be a contiguous 1-D float32 array, got {} of shape {:?}", a.name, a.kind.name(), a.shape)));
    }
    Ok(())
}

/// `(T, K)` of a feature shape: tokens and elements per token (validates layout, rank and patch).
#[pyfunction]
fn grid(py: Python<'_>, shape: Vec<usize>, layout: &str, patch: usize) -> PyResult<(usize, usize)> {
    guard(py, || {
        let g = token_grid(&shape, parse_layout(layout)?, patch)?;
        Ok((g.tokens(), g.k()))
    })
}

/// `out[t] = reduce(J over token t)` (contract §2).
#[pyfunction]
#[pyo3(signature = (j, layout, patch, reduce, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn token_tolerance(
    py: Python<'_>,
    j: &Bound<'_, PyAny>,
    layout: &str,
    patch: usize,
    reduce: &str,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let (layout, reduce) = (parse_layout(layout)?, parse_reduce(reduce)?);
        token_stat(py, j, "J", layout, patch, TokenStat::Tolerance(reduce), out, stream)
    })
}

/// `token_tolerance` and `token_rms`: one statistic of `a` into `out` (`T` float32).
#[allow(clippy::too_many_arguments)]
fn token_stat(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    name: &'static str,
    layout: Layout,
    patch: usize,
    stat: TokenStat,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> R<()> {
    let ia = import(a, name, stream)?;
    let oa = import(out, "out", stream)?;
    let g = token_grid(&ia.shape, layout, patch)?;
    let dev = device_of(&[&ia, &oa])?;
    let call = TokenStatsArgs { input: ia.buf(), shape: g.shape, patch, stat, out: oa.buf() }.validate()?;
    on_device(py, dev, stream, |ex| ex.run(&call))
}

/// Nominal steps `Δ_t` for budget `D` (contract §3.2), times `beta`.
#[pyfunction]
#[pyo3(signature = (jt, budget, strategy, seed, beta, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn allocate_steps(
    py: Python<'_>,
    jt: &Bound<'_, PyAny>,
    budget: f64,
    strategy: &str,
    seed: u64,
    beta: f64,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let strategy = parse_strategy(strategy, seed)?;
        let ja = import(jt, "token tolerances", stream)?;
        let oa = import(out, "out", stream)?;
        let dev = device_of(&[&ja, &oa])?;
        f32_vector(&ja, Error::Arg)?;
        f32_vector(&oa, Error::Shape)?;
        let call = AllocateArgs { token_tol: ja.buf(), budget, strategy, beta, out: oa.buf() }.validate()?;
        on_device(py, dev, stream, |ex| ex.run(&call))
    })
}

/// Runs `f` without the GIL on the executor of `dev`: the host, or the caller's stream.
fn on_device<T: Send>(py: Python<'_>, dev: Dev, stream: usize, f: impl FnOnce(&Executor) -> Result<T, Error> + Send) -> R<T> {
    Ok(match dev {
        Dev::Cuda(ord) => {
            // SAFETY: the `stream=` contract.
            let cuda = unsafe { Cuda::borrowed(ord as usize, stream as *mut std::ffi::c_void, false) }?;
            py.detach(|| f(&Executor::Cuda(&cuda)))?
        }
        Dev::Cpu => py.detach(|| f(&Executor::Host(None)))?,
    })
}

/// Steps matched to the **measured** budget (contract §3.4); returns `(beta, measured_mse, evaluations)`.
#[pyfunction]
#[pyo3(signature = (jt, x, layout, patch, budget, strategy, seed, bits, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn allocate_steps_measured(
    py: Python<'_>,
    jt: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    layout: &str,
    patch: usize,
    budget: f64,
    strategy: &str,
    seed: u64,
    bits: u32,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<(f64, f64, u32)> {
    guard(py, || {
        let (layout, strategy, bits) = (parse_layout(layout)?, parse_strategy(strategy, seed)?, parse_bits(bits)?);
        let ja = import(jt, "token tolerances", stream)?;
        let xa = import(x, "x", stream)?;
        let oa = import(out, "out", stream)?;
        let dev = device_of(&[&xa, &ja, &oa])?;
        let g = token_grid(&xa.shape, layout, patch)?;
        f32_vector(&ja, Error::Arg)?;
        f32_vector(&oa, Error::Shape)?;
        let alloc = AllocateArgs { token_tol: ja.buf(), budget, strategy, beta: 1.0, out: oa.buf() };
        let call = MeasuredArgs { alloc, x: xa.buf(), shape: g.shape, patch, bits }.validate()?;
        let m = on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok((m.beta, m.measured_mse, m.evaluations))
    })
}

/// `out[t] = sqrt(Σ x² / K)` over token `t` of the feature `x` (contract §3.5); a non-finite `x`
/// is an error naming its first flat index.
#[pyfunction]
#[pyo3(signature = (x, layout, patch, out, stream=0))]
fn token_rms(py: Python<'_>, x: &Bound<'_, PyAny>, layout: &str, patch: usize, out: &Bound<'_, PyAny>, stream: usize) -> PyResult<()> {
    guard(py, || token_stat(py, x, "x", parse_layout(layout)?, patch, TokenStat::Rms, out, stream))
}

/// Caps `c_t = κ·max(r_t, 2^-24·max_t r_t)` from the token RMS values `rms` (contract §3.5).
#[pyfunction]
#[pyo3(signature = (rms, kappa, out, stream=0))]
fn caps_from_rms(py: Python<'_>, rms: &Bound<'_, PyAny>, kappa: f32, out: &Bound<'_, PyAny>, stream: usize) -> PyResult<()> {
    guard(py, || {
        let ra = import(rms, "token RMS", stream)?;
        let oa = import(out, "out", stream)?;
        let dev = device_of(&[&ra, &oa])?;
        f32_vector(&ra, Error::Arg)?;
        f32_vector(&oa, Error::Shape)?;
        let call = CapsArgs { rms: ra.buf(), kappa, out: oa.buf() }.validate()?;
        on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok(())
    })
}

/// Capped steps `Δ_t = min(f32(a·β)·j_t, f32(b·β)·c_t)` for budget `D` (contract §3.5).
#[pyfunction]
#[pyo3(signature = (jt, caps, budget, beta, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn allocate_steps_capped(
    py: Python<'_>,
    jt: &Bound<'_, PyAny>,
    caps: &Bound<'_, PyAny>,
    budget: f64,
    beta: f64,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    guard(py, || {
        let ja = import(jt, "token tolerances", stream)?;
        let ca = import(caps, "caps", stream)?;
        let oa = import(out, "out", stream)?;
        let dev = device_of(&[&ja, &ca, &oa])?;
        f32_vector(&ja, Error::Arg)?;
        f32_vector(&ca, Error::Arg)?;
        f32_vector(&oa, Error::Shape)?;
        let call = CappedArgs { token_tol: ja.buf(), caps: ca.buf(), budget, beta, out: oa.buf() }.validate()?;
        on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok(())
    })
}

/// Capped steps matched to the **measured** budget (contracts §3.4, §3.5); returns
/// `(beta, measured_mse, evaluations)`.
#[pyfunction]
#[pyo3(signature = (jt, caps, x, layout, patch, budget, bits, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn allocate_steps_capped_measured(
    py: Python<'_>,
    jt: &Bound<'_, PyAny>,
    caps: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    layout: &str,
    patch: usize,
    budget: f64,
    bits: u32,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<(f64, f64, u32)> {
    guard(py, || {
        let (layout, bits) = (parse_layout(layout)?, parse_bits(bits)?);
        let ja = import(jt, "token tolerances", stream)?;
        let ca = import(caps, "caps", stream)?;
        let xa = import(x, "x", stream)?;
        let oa = import(out, "out", stream)?;
        let dev = device_of(&[&xa, &ja, &ca, &oa])?;
        let g = token_grid(&xa.shape, layout, patch)?;
        f32_vector(&ja, Error::Arg)?;
        f32_vector(&ca, Error::Arg)?;
        f32_vector(&oa, Error::Shape)?;
        let capped = CappedArgs { token_tol: ja.buf(), caps: ca.buf(), budget, beta: 1.0, out: oa.buf() };
        let call = CappedMeasuredArgs { capped, x: xa.buf(), shape: g.shape, patch, bits }.validate()?;
        let m = on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok((m.beta, m.measured_mse, m.evaluations))
    })
}

/// Fused quantize/dequantize (contract §4). `recon` may be `x` itself (in place). Returns a dict
/// of the statistics: clamped, total_sse, mse, histogram (or None), entropy_bits, bits_per_element.
#[pyfunction]
#[pyo3(signature = (x, layout, patch, steps, bits, symbols=None, recon=None, token_sse=None, histogram=true, stream=0))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layout: &str,
    patch: usize,
    steps: &Bound<'py, PyAny>,
    bits: u32,
    symbols: Option<&Bound<'py, PyAny>>,
    recon: Option<&Bound<'py, PyAny>>,
    token_sse: Option<&Bound<'py, PyAny>>,
    histogram: bool,
    stream: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (r, g) = guard(py, || {
        let q = QuantArrays::import(x, steps, symbols, recon, token_sse, stream)?;
        let (args, g, dev) = q.args(layout, patch, bits, histogram)?;
        let call = args.validate()?;
        let r = on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok((r, g))
    })?;
    report_dict(py, &r, &g)
}

/// The arrays of one quantization, imported (they stay alive, and borrowed, while this lives).
struct QuantArrays {
    x: Array,
    steps: Array,
    symbols: Option<Array>,
    recon: Option<Array>,
    token_sse: Option<Array>,
}

impl QuantArrays {
    fn import(
        x: &Bound<'_, PyAny>,
        steps: &Bound<'_, PyAny>,
        symbols: Option<&Bound<'_, PyAny>>,
        recon: Option<&Bound<'_, PyAny>>,
        token_sse: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> R<QuantArrays> {
        Ok(QuantArrays {
            x: import(x, "x", stream)?,
            steps: import(steps, "steps", stream)?,
            symbols: symbols.map(|o| import(o, "symbols", stream)).transpose()?,
            recon: recon.map(|o| import(o, "recon", stream)).transpose()?,
            token_sse: token_sse.map(|o| import(o, "token_sse", stream)).transpose()?,
        })
    }

    fn all(&self) -> Vec<&Array> {
        [Some(&self.x), Some(&self.steps), self.symbols.as_ref(), self.recon.as_ref(), self.token_sse.as_ref()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The core's arguments (the package's own rules first: 1-D f32 steps, outputs of x's shape),
    /// the grid, and the one device of every array.
    fn args(&self, layout: &str, patch: usize, bits: u32, histogram: bool) -> Result<(QuantizeArgs, TokenGrid, Dev), Error> {
        let (layout, bits) = (parse_layout(layout)?, parse_bits(bits)?);
        let dev = device_of(&self.all())?;
        let g = token_grid(&self.x.shape, layout, patch)?;
        f32_vector(&self.steps, Error::Shape)?;
        for o in [&self.symbols, &self.recon].into_iter().flatten() {
            check_same_shape(o, &self.x)?;
        }
        let args = QuantizeArgs {
            x: self.x.buf(),
            shape: g.shape,
            patch: g.patch,
            steps: self.steps.buf(),
            bits,
            symbols: self.symbols.as_ref().map(Array::buf),
            recon: self.recon.as_ref().map(Array::buf),
            token_sse: self.token_sse.as_ref().map(Array::buf),
            histogram,
            histogram_out: None,
        };
        Ok((args, g, dev))
    }
}

/// A quantization's report as the package's dict.
fn report_dict<'py>(py: Python<'py>, r: &QuantizeReport, g: &TokenGrid) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("clamped", r.clamped)?;
    d.set_item("total_sse", r.total_sse)?;
    d.set_item("mse", r.mse)?;
    d.set_item("tokens", g.tokens())?;
    d.set_item("k", g.k())?;
    d.set_item("histogram", r.histogram.clone())?;
    d.set_item("entropy_bits", r.rate.as_ref().map(|r| r.entropy_bits))?;
    d.set_item("bits_per_element", r.rate.as_ref().map(|r| r.bits_per_element))?;
    Ok(d)
}

/// Matched-NRMSE perturbation (contract §6) into `out` (which may be `x`: in place). Returns
/// `(scales, zero_samples)`.
#[pyfunction]
#[pyo3(signature = (x, j, nrmse, noise, seed, subsequence, out, stream=0))]
#[allow(clippy::too_many_arguments)]
fn perturb(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    j: Option<&Bound<'_, PyAny>>,
    nrmse: f64,
    noise: &str,
    seed: u64,
    subsequence: u32,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<(Vec<f32>, Vec<usize>)> {
    guard(py, || {
        let p = PerturbArrays::import(x, j, out, stream)?;
        let (args, dev) = p.args(nrmse, noise, seed, subsequence)?;
        let call = args.validate()?;
        let rep = on_device(py, dev, stream, |ex| ex.run(&call))?;
        Ok((rep.scales, rep.zero_samples))
    })
}

/// The arrays of one perturbation, imported.
struct PerturbArrays {
    x: Array,
    j: Option<Array>,
    out: Array,
}

impl PerturbArrays {
    fn import(x: &Bound<'_, PyAny>, j: Option<&Bound<'_, PyAny>>, out: &Bound<'_, PyAny>, stream: usize) -> R<PerturbArrays> {
        Ok(PerturbArrays {
            x: import(x, "x", stream)?,
            j: j.map(|j| import(j, "J", stream)).transpose()?,
            out: import(out, "out", stream)?,
        })
    }

    fn all(&self) -> Vec<&Array> {
        [Some(&self.x), self.j.as_ref(), Some(&self.out)].into_iter().flatten().collect()
    }

    /// The core's arguments (the package's rules first: a sample dimension, J in x's dtype,
    /// arrays of x's shape) and the one device of every array.
    fn args(&self, nrmse: f64, noise: &str, seed: u64, subsequence: u32) -> Result<(PerturbArgs, Dev), Error> {
        let spec = NoiseSpec { kind: parse_noise(noise)?, seed, subsequence };
        let dev = device_of(&self.all())?;
        let xa = &self.x;
        xa.float_dtype()?;
        if xa.shape.is_empty() {
            return Err(Error::Shape("x has no sample dimension (a 0-d array)".into()));
        }
        if let Some(j) = self.j.as_ref().filter(|j| j.kind != xa.kind) {
            // Said in numpy's names (the core would say "f16").
            return Err(Error::Dtype(format!("J is {}, x is {}: perturb needs J in x's dtype", j.kind.name(), xa.kind.name())));
        }
        for a in [self.j.as_ref(), Some(&self.out)].into_iter().flatten() {
            check_same_shape(a, xa)?;
        }
        let args = PerturbArgs {
            x: xa.buf(),
            samples: xa.shape[0],
            jnd: self.j.as_ref().map(Array::buf),
            out: self.out.buf(),
            nrmse,
            noise: spec,
            scales_out: None,
        };
        Ok((args, dev))
    }
}

/// The §5 noise of flat elements `offset .. offset + len(out)` into the float32 `out`.
#[pyfunction]
#[pyo3(signature = (out, offset, seed, subsequence, noise, stream=0))]
fn noise(py: Python<'_>, out: &Bound<'_, PyAny>, offset: u64, seed: u64, subsequence: u32, noise: &str, stream: usize) -> PyResult<()> {
    guard(py, || {
        let spec = NoiseSpec { kind: parse_noise(noise)?, seed, subsequence };
        let oa = import(out, "out", stream)?;
        let call = NoiseArgs { out: oa.buf(), offset, noise: spec }.validate()?;
        on_device(py, oa.dev, stream, |ex| ex.run(&call))?;
        Ok(())
    })
}

/// The raw Philox4x32-10 block of a counter and key (contract §5.1), for known-answer checks.
#[pyfunction]
fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox::philox4x32_10(counter, key)
}

/// Fisher–Yates permutation of the `Permuted` strategy (contract §3.3).
#[pyfunction]
fn permutation(py: Python<'_>, tokens: usize, seed: u64) -> Vec<u32> {
    py.detach(|| philox::permutation(tokens, seed))
}

fn rate_dict<'py>(py: Python<'py>, r: &codec::RateReport, s: &codec::Sections) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("file_bytes", r.file_bytes)?;
    d.set_item("elements", r.elements)?;
    d.set_item("tokens", r.tokens)?;
    d.set_item("alphabet", r.alphabet)?;
    d.set_item("entropy_bits", r.entropy_bits)?;
    d.set_item("bits_per_element", r.bits_per_element)?;
    d.set_item("estimate_bits_per_element", r.estimate_bits_per_element)?;
    d.set_item("gap", r.gap)?;
    d.set_item("model_bits", r.model_bits)?;
    d.set_item("step_bytes", r.step_bytes)?;
    d.set_item("step_bits_per_token", r.step_bits_per_token)?;
    d.set_item("step_bits_per_element", r.step_bits_per_element)?;
    d.set_item("symbol_bits_per_element", r.symbol_bits_per_element)?;
    d.set_item("coded_estimate_bits_per_element", r.coded_estimate_bits_per_element)?;
    d.set_item("coded_gap", r.coded_gap)?;
    let sec = PyDict::new(py);
    sec.set_item("header", s.header)?;
    sec.set_item("table", s.table)?;
    sec.set_item("steps", s.steps)?;
    sec.set_item("payload", s.payload)?;
    sec.set_item("crc", s.crc)?;
    d.set_item("sections", sec)?;
    Ok(d)
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Nchw => "nchw",
        Layout::Ntc => "ntc",
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::Bf16 => "bfloat16",
    }
}

/// How `encode` is asked to store the steps (`step_mode`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PyStepMode {
    Auto,
    Tensor,
    Token(codec::StepCoding),
    Channel(codec::StepCoding),
}

fn parse_step_mode(mode: Option<&str>, grid: Option<u32>) -> Result<PyStepMode, Error> {
    let g = codec::StepCoding::LogGrid { per_octave: grid.unwrap_or(codec::DEFAULT_PER_OCTAVE) };
    let m = match mode.map(|m| m.to_ascii_lowercase()).as_deref() {
        None | Some("auto") => PyStepMode::Auto,
        Some("tensor") => PyStepMode::Tensor,
        Some("token") => PyStepMode::Token(g),
        Some("token-f16") => PyStepMode::Token(codec::StepCoding::F16),
        Some("channel") => PyStepMode::Channel(g),
        Some("channel-f16") => PyStepMode::Channel(codec::StepCoding::F16),
        Some(other) => {
            return Err(Error::Arg(format!(
                "step_mode must be 'auto', 'tensor', 'token', 'token-f16', 'channel' or 'channel-f16', got {other:?}"
            )))
        }
    };
    if grid.is_some()
        && !matches!(
            m,
            PyStepMode::Auto
                | PyStepMode::Token(codec::StepCoding::LogGrid { .. })
                | PyStepMode::Channel(codec::StepCoding::LogGrid { .. })
        )
    {
        return Err(Error::Arg("grid applies to the 'auto', 'token' and 'channel' step modes only".into()));
    }
    Ok(m)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn step_mode_items(d: &Bound<'_, PyDict>, m: codec::StepMode) -> PyResult<()> {
    d.set_item("step_mode", m.name())?;
    d.set_item("per_octave", m.per_octave())?;
    Ok(())
}

/// Encodes a CPU feature into a `.fjq` file (docs/fjq-format.md). The steps are rounded to what
/// the file stores before quantizing. `step_mode`: `auto` (default: `tensor` when all `T` steps
/// are equal, else `token`), `token` / `token-f16` (`T` steps), `tensor` (1 step), `channel` /
/// `channel-f16` (`C` steps); `grid`: log-grid points per octave (default 16). Returns a dict:
/// bytes, steps (the rounded per-token steps, a float32 bytearray; empty for the channel modes),
/// channel_steps (the rounded per-channel steps; empty otherwise), step_mode, per_octave,
/// clamped, mse, rate (a dict with `sections`).
#[pyfunction]
#[pyo3(signature = (x, layout, patch, steps, bits, step_mode=None, grid=None))]
#[allow(clippy::too_many_arguments)]
fn encode<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layout: &str,
    patch: usize,
    steps: &Bound<'py, PyAny>,
    bits: u32,
    step_mode: Option<&str>,
    grid: Option<u32>,
) -> PyResult<Bound<'py, PyDict>> {
    let f = guard(py, || {
        let (layout, bits) = (parse_layout(layout)?, parse_bits(bits)?);
        let how = parse_step_mode(step_mode, grid)?;
        let xa = import(x, "x", 0)?;
        let sa = import(steps, "steps", 0)?;
        if device_of(&[&xa, &sa])? != Dev::Cpu {
            return Err(Error::Arg("encode runs on the CPU: copy x and steps to the host first".into()).into());
        }
        xa.float_dtype()?;
        f32_vector(&sa, Error::Shape)?;
        let g = token_grid(&xa.shape, layout, patch)?;
        let (step_layout, coding) = match how {
            PyStepMode::Auto => {
                (codec::StepLayout::Auto, codec::StepCoding::LogGrid { per_octave: grid.unwrap_or(codec::DEFAULT_PER_OCTAVE) })
            }
            PyStepMode::Tensor => (codec::StepLayout::Tensor, codec::StepCoding::default()),
            PyStepMode::Token(c) => (codec::StepLayout::Token, c),
            PyStepMode::Channel(c) => (codec::StepLayout::Channel, c),
        };
        // The core's one encode call (the C ABI's `fj_encode` too): it checks the step count for
        // the mode, the coding and the container, and runs the fused encoder.
        let call = EncodeArgs {
            x: xa.buf(),
            shape: g.shape,
            patch,
            steps: sa.buf(),
            layout: step_layout,
            coding,
            bits,
            format: codec::Format::default(),
            steps_out: None,
            out: None,
        }
        .validate()?;
        on_device(py, Dev::Cpu, 0, |ex| ex.run(&call))
    })?;
    let (bytes, mode, st, cst, clamped, mse, rate, sections) =
        (f.bytes, f.step_mode, f.steps, f.channel_steps, f.clamped, f.mse, f.rate, f.sections);
    let d = PyDict::new(py);
    d.set_item("bytes", PyBytes::new(py, &bytes))?;
    d.set_item("steps", PyByteArray::new(py, &f32_bytes(&st)))?;
    d.set_item("channel_steps", PyByteArray::new(py, &f32_bytes(&cst)))?;
    step_mode_items(&d, mode)?;
    d.set_item("clamped", clamped)?;
    d.set_item("mse", mse)?;
    d.set_item("rate", rate_dict(py, &rate, &sections)?)?;
    Ok(d)
}

/// Decodes a `.fjq` file (version 1, 2 or 3). Returns a dict: version, dtype, layout, shape, patch,
/// bits, step_mode, per_octave, and recon, symbols, steps and channel_steps as little-endian
/// bytearrays (the file's dtype; int8/int16; float32 per-token steps, empty for the channel
/// modes; float32 per-channel steps, empty otherwise), rate (a dict with `sections`). A malformed
/// file raises `featjnd.Error` (message `fjq: ...`).
#[pyfunction]
fn decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let dec = guard(py, || Ok(py.detach(|| codec::decode(data))?))?;
    let d = PyDict::new(py);
    d.set_item("version", dec.version)?;
    d.set_item("dtype", dtype_name(dec.dtype))?;
    d.set_item("layout", layout_name(dec.layout))?;
    d.set_item("shape", dec.shape.sizes())?;
    d.set_item("patch", dec.patch)?;
    d.set_item("bits", dec.bits.bits())?;
    step_mode_items(&d, dec.step_mode)?;
    d.set_item("recon", PyByteArray::new(py, &dec.recon.to_le_bytes()))?;
    d.set_item("symbols", PyByteArray::new(py, &dec.symbols.to_le_bytes()))?;
    d.set_item("steps", PyByteArray::new(py, &f32_bytes(&dec.steps)))?;
    d.set_item("channel_steps", PyByteArray::new(py, &f32_bytes(&dec.channel_steps)))?;
    d.set_item("rate", rate_dict(py, &dec.rate, &dec.sections)?)?;
    Ok(d)
}

#[pymodule]
fn _featjnd(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Each class carries its default `kind` (instances raised here set their own, e.g. the
    // three CUDA variants); `index`/`value`/`budget` default to None.
    let classes = [
        ("Error", py.get_type::<exc::Error>(), "Error"),
        ("ShapeError", py.get_type::<ShapeError>(), "Shape"),
        ("DtypeError", py.get_type::<DtypeError>(), "Dtype"),
        ("DeviceError", py.get_type::<DeviceError>(), "MixedDevices"),
        ("NonContiguousError", py.get_type::<NonContiguousError>(), "NonContiguous"),
        ("PatchError", py.get_type::<PatchError>(), "Patch"),
        ("EmptyError", py.get_type::<EmptyError>(), "Empty"),
        ("BudgetError", py.get_type::<BudgetError>(), "Budget"),
        ("NrmseError", py.get_type::<NrmseError>(), "Nrmse"),
        ("JndError", py.get_type::<JndError>(), "Jnd"),
        ("NonFiniteError", py.get_type::<NonFiniteError>(), "NonFinite"),
        ("ArgError", py.get_type::<ArgError>(), "Arg"),
        ("UnreachableError", py.get_type::<UnreachableError>(), "Unreachable"),
        ("ResultOverflowError", py.get_type::<ResultOverflowError>(), "Overflow"),
        ("CudaError", py.get_type::<CudaError>(), "Cuda"),
        ("InternalError", py.get_type::<InternalError>(), "Internal"),
    ];
    for (name, class, kind) in classes {
        class.setattr("kind", kind)?;
        if name == "Error" {
            for attr in ["index", "value", "budget"] {
                class.setattr(attr, py.None())?;
            }
        }
        m.add(name, class)?;
    }
    m.add_function(wrap_pyfunction!(grid, m)?)?;
    m.add_function(wrap_pyfunction!(token_tolerance, m)?)?;
    m.add_function(wrap_pyfunction!(allocate_steps, m)?)?;
    m.add_function(wrap_pyfunction!(allocate_steps_measured, m)?)?;
    m.add_function(wrap_pyfunction!(token_rms, m)?)?;
    m.add_function(wrap_pyfunction!(caps_from_rms, m)?)?;
    m.add_function(wrap_pyfunction!(allocate_steps_capped, m)?)?;
    m.add_function(wrap_pyfunction!(allocate_steps_capped_measured, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(perturb, m)?)?;
    m.add_function(wrap_pyfunction!(noise, m)?)?;
    m.add_function(wrap_pyfunction!(philox4x32_10, m)?)?;
    m.add_function(wrap_pyfunction!(permutation, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_stats_slots, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_with_jnd_stats_slots, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::perturb_stats_slots, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_async, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_with_jnd_async, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::perturb_async, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_batch_async, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::perturb_batch_async, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::quantize_decode, m)?)?;
    m.add_function(wrap_pyfunction!(sync_free::perturb_decode, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CONTRACT_VERSION", 1)?;
    // The CUDA path is compiled in; it runs where a driver, a device and NVRTC exist.
    m.add("CUDA", true)?;
    Ok(())
}
