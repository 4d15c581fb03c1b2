"""Type stubs of the extension module ``featjnd._featjnd`` (use the ``featjnd`` package instead).

Every array argument is a numpy array, a torch tensor or another DLPack producer, dense and
row-major, all on one device; outputs are written in place and must not overlap the inputs
(except where noted). ``stream`` is the CUDA stream handle of a call on CUDA arrays (0: the
legacy default stream); it must belong to the arrays' device and stay alive during the call.
"""

from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

__version__: str
CONTRACT_VERSION: int
CUDA: bool

class Error(ValueError):
    """Base class of every featjnd error; ``kind`` names the contract's error variant."""

    kind: ClassVar[str]
    index: Optional[int]
    value: Optional[float]
    budget: Optional[float]

class ShapeError(Error): ...
class DtypeError(Error): ...
class DeviceError(Error): ...
class NonContiguousError(Error): ...
class PatchError(Error): ...
class EmptyError(Error): ...
class BudgetError(Error): ...
class NrmseError(Error): ...

class JndError(Error):
    index: int
    value: float

class NonFiniteError(Error):
    index: int
    value: float

class ArgError(Error): ...

class UnreachableError(Error):
    budget: float

class ResultOverflowError(Error): ...
class CudaError(Error): ...
class InternalError(Error): ...

def grid(shape: Sequence[int], layout: str, patch: int) -> Tuple[int, int]:
    """``(T, K)``: tokens and elements per token of a feature shape."""

def token_tolerance(j: Any, layout: str, patch: int, reduce: str, out: Any, stream: int = 0) -> None:
    """Writes the ``T`` token tolerances of ``j`` into the float32 ``out``."""

def allocate_steps(jt: Any, budget: float, strategy: str, seed: int, beta: float, out: Any, stream: int = 0) -> None:
    """Writes the steps for budget ``D`` (times ``beta``) into the float32 ``out``."""

def allocate_steps_measured(
    jt: Any, x: Any, layout: str, patch: int, budget: float, strategy: str, seed: int, bits: int, out: Any, stream: int = 0
) -> Tuple[float, float, int]:
    """Writes the measured-budget steps into ``out``; returns ``(beta, measured_mse, evaluations)``."""

def token_rms(x: Any, layout: str, patch: int, out: Any, stream: int = 0) -> None:
    """Writes the ``T`` token RMS values ``sqrt(sum(x^2)/K)`` of ``x`` into the float32 ``out``."""

def caps_from_rms(rms: Any, kappa: float, out: Any, stream: int = 0) -> None:
    """Writes the caps ``kappa * max(r_t, 2^-24 * max r)`` into the float32 ``out``."""

def allocate_steps_capped(jt: Any, caps: Any, budget: float, beta: float, out: Any, stream: int = 0) -> None:
    """Writes the capped steps for budget ``D`` (both scales times ``beta``) into the float32 ``out``."""

def allocate_steps_capped_measured(
    jt: Any, caps: Any, x: Any, layout: str, patch: int, budget: float, bits: int, out: Any, stream: int = 0
) -> Tuple[float, float, int]:
    """Writes the measured-budget capped steps into ``out``; returns ``(beta, measured_mse, evaluations)``."""

def quantize(
    x: Any,
    layout: str,
    patch: int,
    steps: Any,
    bits: int,
    symbols: Optional[Any] = None,
    recon: Optional[Any] = None,
    token_sse: Optional[Any] = None,
    histogram: bool = True,
    stream: int = 0,
) -> Dict[str, Any]:
    """Quantizes ``x`` (``recon`` may be ``x``: in place); returns the statistics."""

def perturb(
    x: Any, j: Optional[Any], nrmse: float, noise: str, seed: int, subsequence: int, out: Any, stream: int = 0
) -> Tuple[List[float], List[int]]:
    """Writes ``x'`` into ``out`` (which may be ``x``); returns ``(scales, zero_samples)``."""

def noise(out: Any, offset: int, seed: int, subsequence: int, noise: str, stream: int = 0) -> None:
    """Writes the noise of flat elements ``offset ..`` into the float32 ``out``."""

def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> List[int]:
    """One Philox4x32-10 block (four 32-bit words)."""

def permutation(tokens: int, seed: int) -> List[int]:
    """The permutation of the ``permuted`` strategy."""

def encode(
    x: Any, layout: str, patch: int, steps: Any, bits: int, step_mode: Optional[str] = None, grid: Optional[int] = None
) -> Dict[str, Any]:
    """A ``.fjq`` file of a CPU feature: ``bytes``, ``steps`` / ``channel_steps`` (rounded, float32 bytearrays),
    ``step_mode``, ``per_octave``, ``clamped``, ``mse``, ``rate``."""

def decode(data: bytes) -> Dict[str, Any]:
    """A decoded ``.fjq`` file: ``version``, ``dtype``, ``layout``, ``shape``, ``patch``, ``bits``, ``step_mode``,
    ``per_octave``, ``recon``/``symbols``/``steps``/``channel_steps`` (bytearrays), ``rate``."""

# The sync-free calls (contract 8).
def quantize_stats_slots(bits: int) -> int: ...
def quantize_with_jnd_stats_slots(bits: int, tokens: int) -> int: ...
def perturb_stats_slots(samples: int) -> int: ...
def quantize_async(
    x: Any, layout: str, patch: int, steps: Any, bits: int, stats: Any,
    symbols: Optional[Any] = None, recon: Optional[Any] = None, token_sse: Optional[Any] = None, stream: int = 0,
) -> None: ...
def quantize_with_jnd_async(
    x: Any, j: Any, layout: str, patch: int, reduce: str, budget: float, strategy: str, bits: int, steps_out: Any, stats: Any,
    symbols: Optional[Any] = None, recon: Optional[Any] = None, token_sse: Optional[Any] = None, stream: int = 0,
) -> None: ...
def perturb_async(
    x: Any, j: Optional[Any], nrmse: float, noise: str, seed: int, subsequence: int, out: Any, stats: Any, stream: int = 0
) -> None: ...
def quantize_batch_async(items: List[Tuple[Any, str, int, Any, Optional[Any], Optional[Any], Optional[Any]]], bits: int, stats: Any, stream: int = 0) -> None: ...
def perturb_batch_async(items: List[Tuple[Any, Optional[Any], float, str, int, int, Any]], stats: Any, stream: int = 0) -> List[int]: ...
def quantize_decode(stats: Any, x: Any, layout: str, patch: int, bits: int, j: Optional[Any] = None, stream: int = 0) -> Dict[str, Any]: ...
def perturb_decode(stats: Any, x: Any, nrmse: float, j: Optional[Any] = None, stream: int = 0) -> Tuple[List[float], List[int]]: ...
