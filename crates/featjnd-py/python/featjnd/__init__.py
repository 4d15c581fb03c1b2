"""FeatJND kernels for Python.

The ops of the featjnd op contract (``docs/contract.md`` in the repository), on numpy arrays and
torch tensors (any DLPack producer on the CPU), zero-copy:

* :func:`token_tolerance` -- per-token tolerance ``j_t`` from a FeatJND map ``J`` (contract 2);
* :func:`allocate_steps` / :func:`allocate_steps_measured` -- quantization steps under a noise
  budget (contract 3);
* :func:`token_rms` / :func:`caps_from_rms` / :func:`allocate_steps_capped` /
  :func:`allocate_steps_capped_measured` / :func:`quantize_capped` -- the capped allocation, steps
  bounded by what each token holds (contract 3.5);
* :func:`quantize` / :func:`quantize_with_jnd` -- fused quantize/dequantize with statistics
  (contract 4);
* :func:`perturb` -- perturbation at a matched per-sample NRMSE (contract 6);
* :func:`noise` -- the Philox4x32-10 noise every op draws (contract 5);
* :func:`quantize_async`, :func:`quantize_with_jnd_async`, :func:`perturb_async`, their batches
  and :func:`quantize_decode` / :func:`perturb_decode` -- the same ops without a sync
  (contract 8): statistics in a caller's int64 array, decoded when the caller chooses;
* :func:`encode` / :func:`decode` -- the ``.fjq`` feature file (``docs/fjq-format.md``):
  quantized symbols entropy-coded with their steps (one per tensor, token or channel), decoded
  bit for bit.

Features are float32, float16 or bfloat16 (numpy bfloat16 through ``ml_dtypes``), laid out NCHW
(4-D) or NTC (3-D); ``layout=None`` picks it from the rank. Inputs are read in place, never
copied: a non-contiguous array raises :class:`NonContiguousError` (a ``ValueError``). Outputs are
allocated in the input's framework (``torch.empty`` for torch tensors, ``numpy.empty``
otherwise) or written into the ``out=`` arrays you pass. The work runs with the GIL released;
do not modify the arrays from another thread during a call.

Every error is a :class:`featjnd.Error` (a ``ValueError``) subclass whose ``kind`` attribute names
the contract's error variant; :class:`JndError` and :class:`NonFiniteError` carry ``index`` (the
lowest flat index of a bad element) and ``value``.

The ops are not differentiable (torch tensors that require grad are read through ``.detach()``).

CUDA arrays (torch CUDA tensors, CuPy arrays) run the CUDA kernels (compiled at run time by
NVRTC) on ``stream=`` -- an int handle, a ``torch.cuda.Stream`` or any object with
``__cuda_stream__`` -- or by default on torch's (CuPy's) current stream; every array of a call
must be on one device (else :class:`DeviceError`). Where no driver, device or NVRTC exists this
raises :class:`CudaError`. The CUDA path has not been run yet (it was written on a machine
without a GPU).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _featjnd
from ._featjnd import (
    CONTRACT_VERSION,
    ArgError,
    BudgetError,
    CudaError,
    DeviceError,
    DtypeError,
    EmptyError,
    Error,
    InternalError,
    JndError,
    NonContiguousError,
    NonFiniteError,
    NrmseError,
    PatchError,
    ResultOverflowError,
    ShapeError,
    UnreachableError,
)

__version__: str = _featjnd.__version__

__all__ = [
    "ArgError",
    "BudgetError",
    "CONTRACT_VERSION",
    "CudaError",
    "Decoded",
    "DeviceError",
    "DtypeError",
    "EmptyError",
    "Encoded",
    "Error",
    "InternalError",
    "JndError",
    "MeasuredBudget",
    "NonContiguousError",
    "NonFiniteError",
    "NrmseError",
    "PatchError",
    "QuantizeResult",
    "ResultOverflowError",
    "ShapeError",
    "UnreachableError",
    "allocate_steps",
    "allocate_steps_capped",
    "allocate_steps_capped_measured",
    "allocate_steps_measured",
    "caps_from_rms",
    "decode",
    "encode",
    "noise",
    "permutation",
    "perturb",
    "perturb_async",
    "perturb_batch_async",
    "perturb_decode",
    "perturb_stats_slots",
    "quantize",
    "quantize_async",
    "quantize_batch_async",
    "quantize_capped",
    "quantize_decode",
    "quantize_stats_slots",
    "quantize_with_jnd",
    "quantize_with_jnd_async",
    "quantize_with_jnd_stats_slots",
    "stats_buffer",
    "token_rms",
    "token_tolerance",
]

# An array of any supported framework (numpy.ndarray, torch.Tensor, another DLPack producer).
Array = Any


@dataclass(frozen=True)
class MeasuredBudget:
    """How the measured budget was matched (contract 3.4)."""

    beta: float
    """Common factor applied to the nominal steps."""
    measured_mse: float
    """Measured MSE per element of the quantize-dequantize at ``beta``."""
    evaluations: int
    """Quantize passes the bisection took."""


@dataclass(frozen=True)
class QuantizeResult:
    """Outputs and statistics of one quantization (contract 4.3, 4.4)."""

    symbols: Optional[Array]
    """Integer symbols ``q``, shaped like ``x``: int8 (8 bits) or int16 (16 bits)."""
    recon: Optional[Array]
    """Reconstruction ``x_hat`` in ``x``'s dtype (``x`` itself when quantized in place)."""
    token_sse: Optional[Array]
    """Per-token sum of squared error ``e_t`` (float32, T values)."""
    steps: Array
    """The steps ``Delta_t`` used (float32, T values)."""
    clamped: int
    """Elements whose symbol was clamped to +-Q."""
    total_sse: float
    """Sum of ``e_t`` (float64)."""
    mse: float
    """Measured MSE per element: ``total_sse / (T*K)``."""
    histogram: Optional[np.ndarray]
    """Symbol histogram (int64; 255 bins for 8 bits, 512 for 16), or None."""
    entropy_bits: Optional[float]
    """Empirical entropy of the symbols, bits per symbol (None without a histogram)."""
    bits_per_element: Optional[float]
    """Rate estimate: entropy plus 16 bits of side information per token, per element."""
    tokens: int
    """T, the number of tokens."""
    k: int
    """K, the elements per token."""
    token_tol: Optional[Array] = None
    """The token tolerances ``j_t`` (from :func:`quantize_with_jnd` / :func:`quantize_capped`)."""
    measured: Optional[MeasuredBudget] = None
    """The measured-budget match (``measured=True`` in :func:`quantize_with_jnd` /
    :func:`quantize_capped`)."""
    caps: Optional[Array] = None
    """The caps ``c_t`` (from :func:`quantize_capped`)."""


def _torch_module(a: Any) -> Any:
    """The torch module if ``a`` is a torch tensor (torch is never imported by featjnd)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        return torch
    return None


def _input(a: Any) -> Any:
    torch = _torch_module(a)
    if torch is not None and a.requires_grad:
        return a.detach()
    return a


def _np_dtype(kind: str) -> Any:
    if kind == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:  # pragma: no cover - only without ml_dtypes
            raise DtypeError("bfloat16 numpy arrays need the ml_dtypes package") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(kind)


def _dtype_name(a: Any) -> str:
    torch = _torch_module(a)
    if torch is not None:
        return str(a.dtype).replace("torch.", "")
    return str(getattr(getattr(a, "dtype", None), "name", getattr(a, "dtype", "?")))


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _empty(like: Any, shape: Tuple[int, ...], kind: str) -> Any:
    """An uninitialised array of ``kind`` in ``like``'s framework and device."""
    torch = _torch_module(like)
    if torch is not None:
        return torch.empty(shape, dtype=getattr(torch, kind), device=like.device)
    if _is_cupy(like):
        import cupy

        with like.device:
            return cupy.empty(shape, dtype=_np_dtype(kind))
    return np.empty(shape, dtype=_np_dtype(kind))


def _stream(like: Any, stream: Any) -> int:
    """The CUDA stream handle of a call: ``stream=`` (an int, a ``torch.cuda.Stream``, or an
    object with ``__cuda_stream__``), else the current stream of ``like``'s framework on its
    device, else 0 (the legacy default stream; CPU calls ignore it)."""
    if stream is not None:
        if hasattr(stream, "__cuda_stream__"):
            v = stream.__cuda_stream__()
            return int(v[1] if isinstance(v, tuple) else v)
        if hasattr(stream, "cuda_stream"):
            return int(stream.cuda_stream)
        return int(stream)
    torch = _torch_module(like)
    if torch is not None:
        return int(torch.cuda.current_stream(like.device).cuda_stream) if like.is_cuda else 0
    if _is_cupy(like):
        import cupy

        with like.device:
            return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _shape(a: Any) -> Tuple[int, ...]:
    try:
        return tuple(int(d) for d in a.shape)
    except AttributeError:
        raise ArgError(f"expected an array (numpy, torch or DLPack), got {type(a).__name__}") from None


def _layout(a: Any, layout: Optional[str]) -> str:
    if layout is not None:
        return layout
    nd = len(_shape(a))
    if nd == 4:
        return "nchw"
    if nd == 3:
        return "ntc"
    raise ShapeError(f"shape mismatch: x has {nd} dimensions: NCHW features are 4-D and NTC features 3-D (or pass layout=)")


def token_tolerance(
    j: Array,
    patch: int = 1,
    reduce: str = "mean",
    layout: Optional[str] = None,
    *,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """Token tolerances ``j_t`` of a FeatJND map ``J`` (contract 2).

    Args:
        j: the tolerance map, float32/float16/bfloat16, NCHW or NTC; every element finite, > 0.
        patch: NCHW patch size ``p`` (a token is a ``p x p`` patch across all channels); 1 for NTC.
        reduce: ``"mean"``, ``"rms"`` or ``"min"`` over each token's ``K`` elements.
        layout: ``"nchw"`` or ``"ntc"``; None picks it from the rank (4-D / 3-D).
        out: optional float32 array of ``T`` elements to write into.
        stream: CUDA stream for CUDA arrays (default: the framework's current stream).

    Returns:
        ``T`` float32 values (a 1-D array in ``j``'s framework, or ``out``).

    Raises:
        JndError: an element of ``J`` is not finite or <= 0 (``.index``, ``.value``).
    """
    j = _input(j)
    layout = _layout(j, layout)
    tokens, _ = _featjnd.grid(_shape(j), layout, patch)
    if out is None:
        out = _empty(j, (tokens,), "float32")
    _featjnd.token_tolerance(j, layout, patch, reduce, out, _stream(j, stream))
    return out


def allocate_steps(
    jt: Array,
    budget: float,
    strategy: str = "jnd",
    seed: int = 0,
    *,
    measured_x: Optional[Array] = None,
    layout: Optional[str] = None,
    patch: int = 1,
    bits: int = 8,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """Quantization steps ``Delta_t`` for the noise budget ``D`` (contract 3).

    Args:
        jt: token tolerances (1-D float32, finite, > 0), e.g. from :func:`token_tolerance`.
        budget: ``D``, the target mean squared error per element.
        strategy: ``"jnd"`` (``Delta_t`` proportional to ``j_t``), ``"uniform"`` (one step) or
            ``"permuted"`` (the JND steps shuffled with ``seed``: the control).
        seed: the permutation seed of ``"permuted"``.
        measured_x: match the *measured* MSE of quantizing this feature instead of the nominal
            ``Delta^2/12`` (contract 3.4; see :func:`allocate_steps_measured` for the match).
        layout, patch, bits: the quantization ``measured_x`` is measured with.
        out: optional float32 array of ``T`` elements to write into.

    Returns:
        ``T`` float32 steps.
    """
    if measured_x is not None:
        steps, _ = allocate_steps_measured(jt, measured_x, budget, strategy, seed, layout=layout, patch=patch, bits=bits, out=out, stream=stream)
        return steps
    jt = _input(jt)
    if out is None:
        out = _empty(jt, (_shape(jt)[0] if _shape(jt) else 0,), "float32")
    _featjnd.allocate_steps(jt, float(budget), strategy, seed, 1.0, out, _stream(jt, stream))
    return out


def allocate_steps_measured(
    jt: Array,
    x: Array,
    budget: float,
    strategy: str = "jnd",
    seed: int = 0,
    *,
    layout: Optional[str] = None,
    patch: int = 1,
    bits: int = 8,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Tuple[Array, MeasuredBudget]:
    """Steps whose quantization of ``x`` measures ``D`` within 0.1% (contract 3.4).

    All nominal steps are scaled by one factor ``beta`` found by bisection.

    Returns:
        ``(steps, MeasuredBudget(beta, measured_mse, evaluations))``.

    Raises:
        UnreachableError: ``D`` cannot be matched (above the feature's mean square, or below what
            the symbol range allows: try ``bits=16``).
    """
    jt, x = _input(jt), _input(x)
    layout = _layout(x, layout)
    tokens, _ = _featjnd.grid(_shape(x), layout, patch)
    if out is None:
        out = _empty(x, (tokens,), "float32")
    beta, mse, evals = _featjnd.allocate_steps_measured(jt, x, layout, patch, float(budget), strategy, seed, bits, out, _stream(x, stream))
    return out, MeasuredBudget(beta, mse, evals)


# ---------- the capped allocation (contract 3.5) ----------


def token_rms(
    x: Array,
    patch: int = 1,
    layout: Optional[str] = None,
    *,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """Token RMS ``r_t = sqrt(sum(x^2) / K)`` of a feature (contract 3.5).

    Args:
        x: the feature, float32/float16/bfloat16, NCHW or NTC; every element finite.
        patch: NCHW patch size (1 for NTC).
        layout: ``"nchw"`` or ``"ntc"``; None picks it from the rank (4-D / 3-D).
        out: optional float32 array of ``T`` elements to write into.
        stream: CUDA stream for CUDA arrays (default: the framework's current stream).

    Returns:
        ``T`` float32 values (a 1-D array in ``x``'s framework, or ``out``).

    Raises:
        NonFiniteError: an element of ``x`` is not finite (``.index``: the lowest flat index).
    """
    x = _input(x)
    layout = _layout(x, layout)
    tokens, _ = _featjnd.grid(_shape(x), layout, patch)
    if out is None:
        out = _empty(x, (tokens,), "float32")
    _featjnd.token_rms(x, layout, patch, out, _stream(x, stream))
    return out


def caps_from_rms(
    rms: Array,
    kappa: float = 2.0,
    *,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """Caps ``c_t = kappa * max(r_t, 2^-24 * max_t r_t)`` from token RMS values (contract 3.5).

    The floor only keeps an all-zero token's cap (and step) positive.

    Args:
        rms: token RMS values (1-D float32), e.g. from :func:`token_rms`.
        kappa: the cap factor, finite and > 0 (rounded to float32). At the default 2 every token
            keeps a nominal signal-to-noise ratio of at least 3; ``sqrt(12)`` is the
            reverse-water-filling bound.
        out: optional float32 array of ``T`` elements to write into.

    Returns:
        ``T`` float32 caps.

    Raises:
        ArgError: ``kappa`` not finite or <= 0, or the feature is zero in every token.
    """
    rms = _input(rms)
    if out is None:
        out = _empty(rms, (_shape(rms)[0] if _shape(rms) else 0,), "float32")
    _featjnd.caps_from_rms(rms, float(kappa), out, _stream(rms, stream))
    return out


def allocate_steps_capped(
    jt: Array,
    caps: Array,
    budget: float,
    *,
    beta: float = 1.0,
    measured_x: Optional[Array] = None,
    layout: Optional[str] = None,
    patch: int = 1,
    bits: int = 8,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """Capped steps ``Delta_t = min(a * j_t, b * c_t)`` for the noise budget ``D`` (contract 3.5).

    Steps proportional to ``j_t`` (the ``"jnd"`` strategy) but never above a token's cap; the
    budget is met exactly: ``mean(Delta_t^2) / 12 = D * beta^2``. When even every token at its cap
    spends less than ``D``, the steps are the caps scaled up.

    Args:
        jt: token tolerances (1-D float32, finite, > 0), e.g. from :func:`token_tolerance`.
        caps: ``T`` caps (float32, finite, > 0), e.g. from :func:`caps_from_rms`.
        budget: ``D``, the target mean squared error per element.
        beta: a factor applied to the steps (``f32(a * beta)`` and ``f32(b * beta)``).
        measured_x: match the *measured* MSE of quantizing this feature instead (contract 3.4;
            see :func:`allocate_steps_capped_measured`); ``beta`` is then found, not given.
        layout, patch, bits: the quantization ``measured_x`` is measured with.
        out: optional float32 array of ``T`` elements to write into.

    Returns:
        ``T`` float32 steps.

    Raises:
        JndError: a token tolerance not finite or <= 0 (``.index``).
        ArgError: a cap not finite or <= 0 (the message names ``c[t]``).
        ShapeError: ``caps`` does not hold one value per token.
    """
    if measured_x is not None:
        steps, _ = allocate_steps_capped_measured(jt, caps, measured_x, budget, layout=layout, patch=patch, bits=bits, out=out, stream=stream)
        return steps
    jt, caps = _input(jt), _input(caps)
    if out is None:
        out = _empty(jt, (_shape(jt)[0] if _shape(jt) else 0,), "float32")
    _featjnd.allocate_steps_capped(jt, caps, float(budget), float(beta), out, _stream(jt, stream))
    return out


def allocate_steps_capped_measured(
    jt: Array,
    caps: Array,
    x: Array,
    budget: float,
    *,
    layout: Optional[str] = None,
    patch: int = 1,
    bits: int = 8,
    out: Optional[Array] = None,
    stream: Any = None,
) -> Tuple[Array, MeasuredBudget]:
    """Capped steps whose quantization of ``x`` measures ``D`` within 0.1% (contracts 3.4, 3.5).

    The capped steps' two scales are both multiplied by one factor ``beta`` found by bisection:
    the steps are ``allocate_steps_capped(jt, caps, budget, beta=beta)``.

    Returns:
        ``(steps, MeasuredBudget(beta, measured_mse, evaluations))``.

    Raises:
        UnreachableError: ``D`` cannot be matched.
    """
    jt, caps, x = _input(jt), _input(caps), _input(x)
    layout = _layout(x, layout)
    tokens, _ = _featjnd.grid(_shape(x), layout, patch)
    if out is None:
        out = _empty(x, (tokens,), "float32")
    beta, mse, evals = _featjnd.allocate_steps_capped_measured(jt, caps, x, layout, patch, float(budget), bits, out, _stream(x, stream))
    return out, MeasuredBudget(beta, mse, evals)


def _resolve(v: Any, make: Any) -> Any:
    """An output argument: an array (written into), True (allocated) or False/None (skipped)."""
    if v is None or v is False:
        return None
    if v is True:
        return make()
    return v


def _outputs(x: Any, shape: Tuple[int, ...], tokens: int, bits: int, symbols: Any, recon: Any, token_sse: Any, in_place: bool) -> Tuple[Any, Any, Any]:
    # The symbol type must be known to allocate: the rule is the core's (contract §9: 8, 16, 0 = 8).
    if bits not in (0, 8, 16):
        raise ArgError(f"bits {bits} (use 8 or 16; 0 means 8)")
    sym = _resolve(symbols, lambda: _empty(x, shape, "int16" if bits == 16 else "int8"))
    if in_place:
        if recon is not True and recon is not None and recon is not False and recon is not x:
            raise ArgError("in_place=True writes the reconstruction into x: do not also pass recon=")
        rec = x
    else:
        rec = _resolve(recon, lambda: _empty(x, shape, _dtype_name(x)))
    sse = _resolve(token_sse, lambda: _empty(x, (tokens,), "float32"))
    return sym, rec, sse


def quantize(
    x: Array,
    steps: Array,
    bits: int = 8,
    patch: int = 1,
    *,
    layout: Optional[str] = None,
    symbols: Any = True,
    recon: Any = True,
    token_sse: Any = True,
    histogram: bool = True,
    in_place: bool = False,
    stream: Any = None,
) -> QuantizeResult:
    """Fused quantize/dequantize with per-token steps (contract 4).

    Per element of token ``t``: ``q = clamp(rint(x * (1/Delta_t)), -Q, Q)`` and
    ``x_hat = q * Delta_t``, each one float32 operation (``Q`` = 127 or 32767): bit-identical on
    every path.

    Args:
        x: the feature (float32/float16/bfloat16, NCHW or NTC), finite.
        steps: ``T`` float32 steps, each finite and > 0 (e.g. from :func:`allocate_steps`).
        bits: symbol width, 8 or 16.
        patch: NCHW patch size (1 for NTC).
        layout: ``"nchw"``/``"ntc"``, or None for the rank's default.
        symbols, recon, token_sse: ``True`` allocates the output, ``False`` skips it, an array is
            written into (int8/int16 shaped like ``x``; ``x``'s dtype and shape; float32 ``T``).
        histogram: count the symbol histogram (and the rate estimate).
        in_place: overwrite ``x`` with its reconstruction (then ``x`` is unspecified after a
            :class:`NonFiniteError`).

    Returns:
        A :class:`QuantizeResult`.
    """
    x, steps = _input(x), _input(steps)
    layout = _layout(x, layout)
    shape = _shape(x)
    tokens, _ = _featjnd.grid(shape, layout, patch)
    sym, rec, sse = _outputs(x, shape, tokens, bits, symbols, recon, token_sse, in_place)
    st = _featjnd.quantize(x, layout, patch, steps, bits, sym, rec, sse, histogram, _stream(x, stream))
    hist = st["histogram"]
    return QuantizeResult(
        symbols=sym,
        recon=rec,
        token_sse=sse,
        steps=steps,
        clamped=st["clamped"],
        total_sse=st["total_sse"],
        mse=st["mse"],
        histogram=None if hist is None else np.asarray(hist, dtype=np.int64),
        entropy_bits=st["entropy_bits"],
        bits_per_element=st["bits_per_element"],
        tokens=st["tokens"],
        k=st["k"],
    )


def quantize_with_jnd(
    x: Array,
    j: Array,
    budget: float,
    strategy: str = "jnd",
    seed: int = 0,
    *,
    patch: int = 1,
    reduce: str = "mean",
    bits: int = 8,
    measured: bool = False,
    layout: Optional[str] = None,
    symbols: Any = True,
    recon: Any = True,
    token_sse: Any = True,
    histogram: bool = True,
    in_place: bool = False,
    stream: Any = None,
) -> QuantizeResult:
    """The JND-guided chain: ``J -> j_t -> Delta_t -> quantize`` (contracts 2-4).

    ``J`` is validated first (a bad ``J`` is reported before a bad ``x``). With ``measured=True``
    the steps match the measured MSE of this quantization to ``budget`` (contract 3.4).

    Returns:
        A :class:`QuantizeResult` with ``token_tol``, ``steps`` and (measured) ``measured`` set.
    """
    x, j = _input(x), _input(j)
    layout = _layout(x, layout)
    if _shape(x) != _shape(j):
        raise ShapeError(f"shape mismatch: x is {list(_shape(x))}, J is {list(_shape(j))}")
    jt = token_tolerance(j, patch, reduce, layout, stream=stream)
    m = None
    if measured:
        steps, m = allocate_steps_measured(jt, x, budget, strategy, seed, layout=layout, patch=patch, bits=bits, stream=stream)
    else:
        steps = allocate_steps(jt, budget, strategy, seed, stream=stream)
    r = quantize(x, steps, bits, patch, layout=layout, symbols=symbols, recon=recon, token_sse=token_sse, histogram=histogram, in_place=in_place, stream=stream)
    return QuantizeResult(**{**r.__dict__, "token_tol": jt, "measured": m})


def quantize_capped(
    x: Array,
    j: Array,
    budget: float,
    kappa: float = 2.0,
    *,
    patch: int = 1,
    reduce: str = "mean",
    bits: int = 8,
    measured: bool = False,
    layout: Optional[str] = None,
    symbols: Any = True,
    recon: Any = True,
    token_sse: Any = True,
    histogram: bool = True,
    in_place: bool = False,
    stream: Any = None,
) -> QuantizeResult:
    """The capped chain: ``J -> j_t``, ``x -> r_t -> c_t``, capped steps, quantize (contract 3.5).

    As :func:`quantize_with_jnd` with the steps of :func:`allocate_steps_capped` and the caps
    ``caps_from_rms(token_rms(x), kappa)``. ``J`` is validated first, then ``x``.

    Returns:
        A :class:`QuantizeResult` with ``token_tol``, ``caps``, ``steps`` and (measured)
        ``measured`` set.
    """
    x, j = _input(x), _input(j)
    layout = _layout(x, layout)
    if _shape(x) != _shape(j):
        raise ShapeError(f"shape mismatch: x is {list(_shape(x))}, J is {list(_shape(j))}")
    jt = token_tolerance(j, patch, reduce, layout, stream=stream)
    caps = caps_from_rms(token_rms(x, patch, layout, stream=stream), kappa, stream=stream)
    m = None
    if measured:
        steps, m = allocate_steps_capped_measured(jt, caps, x, budget, layout=layout, patch=patch, bits=bits, stream=stream)
    else:
        steps = allocate_steps_capped(jt, caps, budget, stream=stream)
    r = quantize(x, steps, bits, patch, layout=layout, symbols=symbols, recon=recon, token_sse=token_sse, histogram=histogram, in_place=in_place, stream=stream)
    return QuantizeResult(**{**r.__dict__, "token_tol": jt, "measured": m, "caps": caps})


def perturb(
    x: Array,
    j: Optional[Array] = None,
    *,
    nrmse: float,
    noise: str = "gaussian",
    seed: int = 0,
    subsequence: int = 0,
    out: Optional[Array] = None,
    in_place: bool = False,
    stream: Any = None,
) -> Tuple[Array, Array]:
    """Perturbation at a matched per-sample NRMSE (contract 6).

    ``x'_n = x_n + s_n * (J_n * xi_n)`` with ``s_n`` chosen so that every sample ``n`` (slice of
    the first dimension) has ``||x'_n - x_n|| / ||x_n|| = nrmse``. ``xi`` is the Philox noise of
    :func:`noise` at each element's flat index. ``j=None`` means ``J = 1`` (the unstructured
    baseline at the same NRMSE).

    Args:
        x: the feature (float32/float16/bfloat16, any rank >= 1), finite.
        j: tolerance map in ``x``'s dtype and shape (finite, > 0), or None.
        nrmse: the target ``r >= 0``.
        noise: ``"gaussian"`` or ``"uniform"`` (unit variance).
        seed, subsequence: the Philox key and counter word 2.
        out: write ``x'`` into this array (``x``'s dtype and shape).
        in_place: write ``x'`` into ``x`` (nothing is written if an error is raised).

    Returns:
        ``(x_perturbed, scales)``: the perturbed feature and ``s_n`` per sample (float32; 0 for a
        sample returned unchanged).
    """
    x = _input(x)
    j = None if j is None else _input(j)
    if in_place:
        if out is not None and out is not x:
            raise ArgError("in_place=True writes into x: do not also pass out=")
        out = x
    elif out is None:
        out = _empty(x, _shape(x), _dtype_name(x))
    scales, _zero = _featjnd.perturb(x, j, float(nrmse), noise, seed, subsequence, out, _stream(x, stream))
    torch = _torch_module(x)
    if torch is not None:
        s = torch.tensor(scales, dtype=torch.float32, device=x.device)
    elif _is_cupy(x):
        import cupy

        with x.device:
            s = cupy.asarray(np.asarray(scales, dtype=np.float32))
    else:
        s = np.asarray(scales, dtype=np.float32)
    return out, s


def noise(
    numel: int,
    offset: int = 0,
    seed: int = 0,
    noise: str = "gaussian",
    subsequence: int = 0,
    *,
    out: Optional[Array] = None,
    like: Optional[Array] = None,
    stream: Any = None,
) -> Array:
    """The noise of flat elements ``offset .. offset+numel-1`` (contract 5).

    Exactly what :func:`perturb` draws there with the same ``seed``, ``subsequence`` and
    ``noise``: Philox4x32-10 keyed by the seed, element ``i`` on lane ``i % 4`` of block ``i // 4``;
    standard normal (Box-Muller) or unit-variance uniform.

    Args:
        out: optional float32 array of ``numel`` elements to write into.
        like: allocate the result in this array's framework (e.g. a torch tensor).

    Returns:
        ``numel`` float32 values.
    """
    if numel < 0:
        raise ArgError(f"numel must be >= 0, got {numel}")
    if out is None:
        out = _empty(like if like is not None else np.empty(0), (int(numel),), "float32")
    elif _shape(out) != (numel,):
        raise ShapeError(f"shape mismatch: out is {list(_shape(out))}, noise needs [{numel}]")
    if numel == 0:
        return out
    _featjnd.noise(out, offset, seed, subsequence, noise, _stream(out, stream))
    return out


def permutation(tokens: int, seed: int) -> np.ndarray:
    """The permutation ``pi`` of the ``"permuted"`` strategy (contract 3.3), as uint32."""
    return np.asarray(_featjnd.permutation(tokens, seed), dtype=np.uint32)


# ---------- the .fjq codec ----------


@dataclass(frozen=True)
class Encoded:
    """A feature coded into a ``.fjq`` file by :func:`encode`."""

    bytes: bytes
    """The ``.fjq`` file."""
    steps: Array
    """The per-token steps the file holds (float32, T values): the given steps rounded to the
    stored form (``step_mode``), the one tensor step repeated in the ``"tensor"`` mode; empty in
    the channel modes. ``quantize(x, steps, bits, patch)`` with these steps gives the symbols and
    reconstruction the file decodes to, bit for bit."""
    clamped: int
    """Elements whose symbol was clamped to +-Q."""
    mse: float
    """Measured MSE per element of the reconstruction against ``x``."""
    rate: Dict[str, Any]
    """The real rate and contract 4's estimate: ``file_bytes``, ``elements``, ``tokens``,
    ``alphabet``, ``entropy_bits``, ``bits_per_element`` (8 * file size / elements),
    ``estimate_bits_per_element``, ``gap``, ``model_bits`` and ``sections`` (byte counts of
    ``header``, ``table``, ``steps``, ``payload``, ``crc``), the step side information
    (``step_bytes``, ``step_bits_per_token``, ``step_bits_per_element``) and
    ``symbol_bits_per_element``, ``coded_estimate_bits_per_element``, ``coded_gap``."""
    step_mode: str = "token"
    """How the file stores the steps: ``"tensor"``, ``"token"``, ``"token-f16"``, ``"channel"``
    or ``"channel-f16"`` (``docs/fjq-format.md``)."""
    per_octave: Optional[int] = None
    """Log-grid points per octave of the ``"token"``/``"channel"`` modes (None otherwise)."""
    channel_steps: Optional[Array] = None
    """The per-channel steps the file holds (float32, C values) in the channel modes; empty
    otherwise."""

    def to_file(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the ``.fjq`` file to ``path``."""
        with open(path, "wb") as f:
            f.write(self.bytes)


@dataclass(frozen=True)
class Decoded:
    """A ``.fjq`` file decoded by :func:`decode`."""

    recon: Array
    """Reconstruction ``x_hat = q * Delta_t`` in the file's dtype and shape."""
    symbols: Array
    """Integer symbols ``q`` (int8 for 8 bits, int16 for 16), shaped like ``recon``."""
    steps: Array
    """The per-token steps (float32, T values; the tensor mode's step repeated; empty in the
    channel modes)."""
    dtype: str
    """``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    layout: str
    """``"nchw"`` or ``"ntc"``."""
    patch: int
    bits: int
    rate: Dict[str, Any]
    """As :attr:`Encoded.rate`."""
    step_mode: str = "token"
    """As :attr:`Encoded.step_mode` (``"token-f16"`` for a version-1 file)."""
    per_octave: Optional[int] = None
    """As :attr:`Encoded.per_octave`."""
    channel_steps: Optional[Array] = None
    """The per-channel steps (float32, C values) in the channel modes; empty otherwise."""
    version: int = 2
    """The file's format version (1 or 2)."""

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"], *, like: Optional[Array] = None) -> "Decoded":
        """Reads and decodes the ``.fjq`` file at ``path`` (see :func:`decode`)."""
        with open(path, "rb") as f:
            return decode(f.read(), like=like)


def _from_bytes(buf: bytearray, kind: str, shape: Tuple[int, ...], like: Any) -> Any:
    """An array of ``kind`` and ``shape`` over ``buf`` (little-endian), in ``like``'s framework
    (torch: on its device) or numpy."""
    torch = _torch_module(like) if like is not None else None
    if torch is not None:
        dt = getattr(torch, kind)
        if len(buf) == 0:
            t = torch.empty(shape, dtype=dt)
        else:
            t = torch.frombuffer(buf, dtype=dt).reshape(shape)
        return t.to(like.device) if like.device.type != "cpu" else t
    return np.frombuffer(buf, dtype=_np_dtype(kind)).reshape(shape)


def encode(
    x: Array,
    steps: Array,
    *,
    patch: int = 1,
    bits: int = 8,
    layout: Optional[str] = None,
    step_mode: Optional[str] = None,
    grid: Optional[int] = None,
) -> Encoded:
    """Codes a feature into a ``.fjq`` file (``docs/fjq-format.md``).

    The steps are first rounded to what the file stores (``step_mode``), then ``x`` is quantized
    with the **rounded** steps (per token exactly :func:`quantize`) and the symbols are
    entropy-coded (ANS with a static model whose frequency table is in the file). The file is
    self-contained: :func:`decode` needs nothing else.

    Args:
        x: the feature (float32/float16/bfloat16, NCHW or NTC), finite, on the CPU. A CUDA torch
            tensor is copied to the host (``.cpu()``) first; other device arrays raise
            :class:`ArgError`.
        steps: float32 steps, each finite and > 0 (e.g. from :func:`allocate_steps`): ``T`` of
            them, one for the ``"tensor"`` mode, ``C`` (channels) for the channel modes.
        patch: NCHW patch size (1 for NTC).
        bits: symbol width, 8 or 16.
        layout: ``"nchw"``/``"ntc"``, or None for the rank's default.
        step_mode: ``None``/``"auto"`` (``"tensor"`` when all ``T`` steps are equal, else
            ``"token"``), ``"token"`` (each step on a log grid, its indices entropy-coded),
            ``"token-f16"`` (f16 mantissas under one power-of-two scale, 16 bits per token; the
            smallest step at least ``2^-38`` times the largest), ``"tensor"`` (one step, stored
            exactly), ``"channel"`` / ``"channel-f16"`` (one step per channel).
        grid: log-grid points per octave (a power of two; default 16: relative rounding at most
            ``2^(1/32) - 1``) for ``"auto"``, ``"token"`` and ``"channel"``.

    Returns:
        An :class:`Encoded`: ``.bytes`` (the file), the rounded ``.steps`` /
        ``.channel_steps`` (in ``x``'s framework, on the CPU), ``.step_mode``, ``.rate``.
    """
    x, steps = _input(x), _input(steps)
    if _torch_module(x) is not None and x.is_cuda:
        x = x.cpu()
    if _torch_module(steps) is not None and steps.is_cuda:
        steps = steps.cpu()
    layout = _layout(x, layout)
    r = _featjnd.encode(x, layout, patch, steps, bits, step_mode=step_mode, grid=grid)
    t, c = r["steps"], r["channel_steps"]
    return Encoded(
        bytes=r["bytes"],
        steps=_from_bytes(t, "float32", (len(t) // 4,), x),
        clamped=r["clamped"],
        mse=r["mse"],
        rate=r["rate"],
        step_mode=r["step_mode"],
        per_octave=r["per_octave"],
        channel_steps=_from_bytes(c, "float32", (len(c) // 4,), x),
    )


def decode(data: Union[bytes, bytearray, memoryview], *, like: Optional[Array] = None) -> Decoded:
    """Decodes a ``.fjq`` file (format version 1, 2 or 3).

    The reconstruction ``x_hat = f32(q) * Delta`` (the token's step, or the channel's in the
    channel modes), narrowed to the file's dtype, is bit-identical to what :func:`encode`
    computed (and, outside the channel modes, to :func:`quantize` with :attr:`Encoded.steps`).

    Args:
        data: the file's bytes.
        like: a torch tensor to return torch tensors on its device; numpy arrays otherwise
            (bfloat16 through ``ml_dtypes``).

    Returns:
        A :class:`Decoded`.

    Raises:
        Error: a malformed file (bad magic, unsupported version, checksum mismatch -- any corrupted
            byte or a truncated file --, or an inconsistent header); the message starts with
            ``fjq:``.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    r = _featjnd.decode(data)
    shape = tuple(r["shape"])
    bits = r["bits"]
    st, ch = r["steps"], r["channel_steps"]
    return Decoded(
        recon=_from_bytes(r["recon"], r["dtype"], shape, like),
        symbols=_from_bytes(r["symbols"], "int8" if bits == 8 else "int16", shape, like),
        steps=_from_bytes(st, "float32", (len(st) // 4,), like),
        dtype=r["dtype"],
        layout=r["layout"],
        patch=r["patch"],
        bits=bits,
        rate=r["rate"],
        step_mode=r["step_mode"],
        per_octave=r["per_octave"],
        channel_steps=_from_bytes(ch, "float32", (len(ch) // 4,), like),
        version=r["version"],
    )


# ---- sync-free calls (contract 8) ----
#
# The same ops without a synchronisation: on CUDA they are only enqueued on ``stream`` (so they
# can be captured into a CUDA graph), their statistics going to a caller's int64 array in x's
# memory; ``quantize_decode`` / ``perturb_decode`` read it later (the one sync you choose) and
# return what the synchronous call returns, or raise its error with the same index. On the CPU
# they run at once and record the same statistics. Outputs are never allocated here: pass them.


def stats_buffer(slots: int, like: Array) -> Array:
    """A zeroed int64 statistics array of ``slots`` values in ``like``'s framework and memory."""
    s = _empty(like, (int(slots),), "int64")
    s[...] = 0
    return s


def quantize_stats_slots(bits: int = 8) -> int:
    """Statistics slots of :func:`quantize_async` (and of each item of :func:`quantize_batch_async`)."""
    return _featjnd.quantize_stats_slots(bits)


def quantize_with_jnd_stats_slots(tokens: int, bits: int = 8) -> int:
    """Statistics slots of :func:`quantize_with_jnd_async` for a feature of ``tokens`` tokens."""
    return _featjnd.quantize_with_jnd_stats_slots(bits, tokens)


def perturb_stats_slots(samples: int) -> int:
    """Statistics slots of :func:`perturb_async` for ``samples`` samples."""
    return _featjnd.perturb_stats_slots(samples)


def quantize_async(
    x: Array,
    steps: Array,
    stats: Array,
    bits: int = 8,
    patch: int = 1,
    *,
    layout: Optional[str] = None,
    symbols: Optional[Array] = None,
    recon: Optional[Array] = None,
    token_sse: Optional[Array] = None,
    stream: Any = None,
) -> None:
    """:func:`quantize` without a sync (``recon`` may be ``x``: in place); the statistics go to
    ``stats`` (:func:`quantize_stats_slots`), read with :func:`quantize_decode`. A bad step or a
    non-finite ``x`` is reported by the decode."""
    x, steps = _input(x), _input(steps)
    _featjnd.quantize_async(x, _layout(x, layout), patch, steps, bits, stats, symbols, recon, token_sse, _stream(x, stream))


def quantize_with_jnd_async(
    x: Array,
    j: Array,
    steps_out: Array,
    stats: Array,
    *,
    budget: float,
    bits: int = 8,
    patch: int = 1,
    layout: Optional[str] = None,
    reduce: str = "mean",
    strategy: str = "jnd",
    symbols: Optional[Array] = None,
    recon: Optional[Array] = None,
    token_sse: Optional[Array] = None,
    stream: Any = None,
) -> None:
    """:func:`quantize_with_jnd` without a sync or a host round trip: the steps go to
    ``steps_out`` (float32, T), the statistics to ``stats`` (:func:`quantize_with_jnd_stats_slots`),
    read with :func:`quantize_decode` (passing ``j``). ``strategy`` is ``"jnd"`` or ``"uniform"``
    (the permuted one needs a permutation made on the host)."""
    x, j = _input(x), _input(j)
    _featjnd.quantize_with_jnd_async(
        x, j, _layout(x, layout), patch, reduce, float(budget), strategy, bits, steps_out, stats, symbols, recon, token_sse, _stream(x, stream)
    )


def perturb_async(
    x: Array,
    j: Optional[Array],
    out: Array,
    stats: Array,
    *,
    nrmse: float,
    noise: str = "gaussian",
    seed: int = 0,
    subsequence: int = 0,
    stream: Any = None,
) -> None:
    """:func:`perturb` without a sync into ``out`` (not ``x``); the per-sample scales and errors go
    to ``stats`` (:func:`perturb_stats_slots`), read with :func:`perturb_decode`."""
    x = _input(x)
    j = None if j is None else _input(j)
    _featjnd.perturb_async(x, j, float(nrmse), noise, seed, subsequence, out, stats, _stream(x, stream))


def quantize_batch_async(items: Any, stats: Array, bits: int = 8, *, stream: Any = None) -> None:
    """Independent quantizations of one dtype and device in one call (one launch per 32 items on
    CUDA). ``items``: dicts with ``x``, ``steps`` and optionally ``layout``, ``patch``,
    ``symbols``, ``recon``, ``token_sse``. Item ``i``'s statistics are
    ``stats[i*s:(i+1)*s]`` with ``s = quantize_stats_slots(bits)``: decode each with
    :func:`quantize_decode` on that slice."""
    its = []
    for it in items:
        x = _input(it["x"])
        its.append(
            (x, _layout(x, it.get("layout")), it.get("patch", 1), _input(it["steps"]), it.get("symbols"), it.get("recon"), it.get("token_sse"))
        )
    like = its[0][0] if its else stats
    _featjnd.quantize_batch_async(its, bits, stats, _stream(like, stream))


def perturb_batch_async(items: Any, stats: Array, *, stream: Any = None) -> Any:
    """Independent perturbations of one dtype and device in one call. ``items``: dicts with
    ``x``, ``out``, ``nrmse`` and optionally ``j``, ``noise``, ``seed``, ``subsequence``. Returns
    each item's offset into ``stats`` (which needs ``sum(perturb_stats_slots(len(x_i)))``
    slots): decode item ``i`` with :func:`perturb_decode` on ``stats[offsets[i]:]``."""
    its = []
    for it in items:
        x = _input(it["x"])
        j = it.get("j")
        its.append(
            (x, None if j is None else _input(j), float(it["nrmse"]), it.get("noise", "gaussian"), it.get("seed", 0), it.get("subsequence", 0), it["out"])
        )
    like = its[0][0] if its else stats
    return _featjnd.perturb_batch_async(its, stats, _stream(like, stream))


def quantize_decode(
    stats: Array,
    x: Array,
    bits: int = 8,
    patch: int = 1,
    *,
    layout: Optional[str] = None,
    j: Optional[Array] = None,
    stream: Any = None,
) -> Dict[str, Any]:
    """The statistics of :func:`quantize_async` / :func:`quantize_with_jnd_async` (same ``x``,
    ``bits``, ``patch``; ``j`` as given to the chain) as a dict (``clamped``, ``total_sse``,
    ``mse``, ``histogram``, ``entropy_bits``, ``bits_per_element``, ``tokens``, ``k``), or the
    error the synchronous call would raise. On CUDA: one copy on ``stream`` and its sync."""
    x = _input(x)
    j = None if j is None else _input(j)
    d = dict(_featjnd.quantize_decode(stats, x, _layout(x, layout), patch, bits, j, _stream(x, stream)))
    if d["histogram"] is not None:
        d["histogram"] = np.asarray(d["histogram"], dtype=np.int64)
    return d


def perturb_decode(stats: Array, x: Array, nrmse: float, *, j: Optional[Array] = None, stream: Any = None) -> Tuple[np.ndarray, list]:
    """The statistics of :func:`perturb_async` (same ``x``, ``j``, ``nrmse``): ``(scales,
    zero_samples)``, or the error the synchronous call would raise."""
    x = _input(x)
    j = None if j is None else _input(j)
    scales, zero = _featjnd.perturb_decode(stats, x, float(nrmse), j, _stream(x, stream))
    return np.asarray(scales, dtype=np.float32), list(zero)
