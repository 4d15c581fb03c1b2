"""The contract's errors (§7) as Python exceptions: classes, messages, indices, and what is
written on error."""

from __future__ import annotations

import numpy as np
import pytest

import featjnd
from conftest import feature, tolerance_map


def raises(cls, kind, match=None):
    """pytest.raises that also checks the class is a featjnd.Error / ValueError and its kind."""

    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(cls, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            e = self.info.value
            assert isinstance(e, featjnd.Error) and isinstance(e, ValueError)
            assert e.kind == kind, (e.kind, kind)
            return out

    return _Ctx()


def test_hierarchy():
    for name in featjnd.__all__:
        obj = getattr(featjnd, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, featjnd.Error) and issubclass(obj, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.0, -1.0])
def test_bad_j_names_the_lowest_flat_index(rng, bad):
    j = tolerance_map(rng, (2, 3, 17, 17), np.float32)
    j.reshape(-1)[1000] = bad
    j.reshape(-1)[1500] = -5.0
    with raises(featjnd.JndError, "Jnd", match=r"J\[1000\]") as e:
        featjnd.token_tolerance(j)
    assert e.value.index == 1000
    assert (np.isnan(e.value.value) and np.isnan(bad)) or e.value.value == bad


def test_bad_token_tolerance_in_allocate(rng):
    jt = rng.uniform(0.1, 1, 17).astype(np.float32)
    jt[[5, 9]] = [0.0, np.nan]
    with raises(featjnd.JndError, "Jnd") as e:
        featjnd.allocate_steps(jt, 0.1)
    assert e.value.index == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_x_in_quantize(rng, dtype):
    x = feature(rng, (1, 7, 17, 5), dtype)
    x.reshape(-1)[300] = np.inf
    x.reshape(-1)[301] = np.nan
    before = x.copy()
    with raises(featjnd.NonFiniteError, "NonFinite", match=r"x\[300\]") as e:
        featjnd.quantize(x, np.full(85, 0.1, np.float32))
    assert e.value.index == 300 and e.value.value == np.inf
    assert np.array_equal(x, before, equal_nan=True)  # out of place: x untouched
    with raises(featjnd.NonFiniteError, "NonFinite") as e:
        featjnd.quantize(x, np.full(85, 0.1, np.float32), in_place=True)
    assert e.value.index == 300 and np.isnan(e.value.value)  # in place: the value is gone


def test_perturb_reports_x_first_and_writes_nothing(rng):
    x = feature(rng, (2, 3, 4, 5), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    x.reshape(-1)[77] = np.nan
    j.reshape(-1)[3] = -1
    before = x.copy()
    with raises(featjnd.NonFiniteError, "NonFinite") as e:
        featjnd.perturb(x, j, nrmse=0.1, in_place=True)
    assert e.value.index == 77
    assert np.array_equal(x, before, equal_nan=True)
    x.reshape(-1)[77] = 1.0
    before = x.copy()
    with raises(featjnd.JndError, "Jnd") as e:
        featjnd.perturb(x, j, nrmse=0.1, in_place=True)
    assert e.value.index == 3 and np.array_equal(x, before)


def test_fused_chain_reports_j_first(rng):
    x = feature(rng, (1, 2, 4, 4), np.float32)
    j = tolerance_map(rng, x.shape, np.float32)
    x.reshape(-1)[0] = np.nan
    j.reshape(-1)[9] = 0
    with raises(featjnd.JndError, "Jnd") as e:
        featjnd.quantize_with_jnd(x, j, 0.1)
    assert e.value.index == 9


@pytest.mark.parametrize("budget", [0.0, -1.0, np.nan, np.inf])
def test_budget(budget):
    with raises(featjnd.BudgetError, "Budget"):
        featjnd.allocate_steps(np.ones(3, np.float32), budget)


@pytest.mark.parametrize("r", [-0.1, np.nan, np.inf])
def test_nrmse(rng, r):
    with raises(featjnd.NrmseError, "Nrmse"):
        featjnd.perturb(feature(rng, (2, 3), np.float32), nrmse=r)


def test_patch_and_args(rng):
    x = feature(rng, (1, 2, 8, 6), np.float32)
    with raises(featjnd.PatchError, "Patch", match="patch 4"):
        featjnd.token_tolerance(np.abs(x) + 1, patch=4)
    with raises(featjnd.ArgError, "Arg", match="patch"):
        featjnd.token_tolerance(np.abs(x) + 1, patch=0)
    with raises(featjnd.ArgError, "Arg", match="patch must be 1"):
        featjnd.token_tolerance(np.ones((2, 3, 4), np.float32), patch=2)
    with raises(featjnd.ArgError, "Arg", match="reduce"):
        featjnd.token_tolerance(np.abs(x) + 1, reduce="median")
    with raises(featjnd.ArgError, "Arg", match="strategy"):
        featjnd.allocate_steps(np.ones(3, np.float32), 1.0, "best")
    with raises(featjnd.ArgError, "Arg", match="noise"):
        featjnd.noise(4, noise="pink")
    with raises(featjnd.ArgError, "Arg", match="bits"):
        featjnd.quantize(x, np.ones(48, np.float32), bits=12)
    with raises(featjnd.ArgError, "Arg", match="layout"):
        featjnd.token_tolerance(np.abs(x) + 1, layout="nhwc")
    with raises(featjnd.ArgError, "Arg", match="past 2\\^64"):
        featjnd.noise(8, offset=2**64 - 4)


@pytest.mark.parametrize("step,t", [(0.0, 3), (-1.0, 0), (np.inf, 5), (np.nan, 1), (1e-39, 2)])
def test_bad_steps_name_the_token(rng, step, t):
    x = feature(rng, (1, 1, 6, 1), np.float32)
    steps = np.full(6, 0.5, np.float32)
    steps[t] = step
    with raises(featjnd.ArgError, "Arg", match=rf"Δ\[{t}\]"):
        featjnd.quantize(x, steps)


def test_shapes(rng):
    x = feature(rng, (2, 3, 4, 4), np.float32)
    with raises(featjnd.ShapeError, "Shape", match="steps"):
        featjnd.quantize(x, np.ones(31, np.float32))
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.quantize(x, np.ones((2, 16), np.float32))
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.quantize_with_jnd(x, np.ones((2, 3, 4, 2), np.float32), 0.1)
    with raises(featjnd.ShapeError, "Shape", match="dimensions"):
        featjnd.token_tolerance(np.ones((4, 4), np.float32))
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.token_tolerance(np.ones((2, 3, 4), np.float32), layout="nchw")
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.token_tolerance(np.ones((2, 3, 4), np.float32), out=np.empty(5, np.float32))
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.perturb(x, np.ones((2, 48), np.float32), nrmse=0.1)
    with raises(featjnd.ShapeError, "Shape"):
        featjnd.quantize(x, np.ones(32, np.float32), symbols=np.empty(x.shape, np.int16))
    with raises(featjnd.ShapeError, "Shape", match="sample"):
        featjnd.perturb(np.float32(1.0).reshape(()), nrmse=0.1)


def test_dtypes(rng):
    with raises(featjnd.DtypeError, "Dtype", match="float64"):
        featjnd.token_tolerance(np.ones((1, 2, 3), np.float64))
    with raises(featjnd.DtypeError, "Dtype"):
        featjnd.token_tolerance(np.ones((1, 2, 3), np.int32))
    x = feature(rng, (2, 3, 4), np.float32)
    with raises(featjnd.DtypeError, "Dtype", match="J is float16"):
        featjnd.perturb(x, np.ones(x.shape, np.float16), nrmse=0.1)
    with raises(featjnd.DtypeError, "Dtype"):
        featjnd.quantize(np.ones((1, 1, 2, 2), np.float32).astype(">f4"), np.ones(4, np.float32))
    with raises(featjnd.ArgError, "Arg", match="token tolerances"):
        featjnd.allocate_steps(np.ones(3, np.float16), 0.1)


def test_empty():
    with raises(featjnd.EmptyError, "Empty"):
        featjnd.token_tolerance(np.ones((0, 3, 4), np.float32))
    with raises(featjnd.EmptyError, "Empty"):
        featjnd.allocate_steps(np.ones(0, np.float32), 0.1)
    with raises(featjnd.EmptyError, "Empty"):
        featjnd.perturb(np.ones((0, 3), np.float32), nrmse=0.1)


def test_non_contiguous_is_a_value_error(rng):
    x = feature(rng, (2, 4, 6, 6), np.float32)
    for view in [x[:, ::2], x.transpose(0, 1, 3, 2), x[..., 1:]]:
        with raises(featjnd.NonContiguousError, "NonContiguous", match="not contiguous"):
            featjnd.quantize(view, np.ones(72, np.float32))
        with pytest.raises(ValueError):
            featjnd.perturb(view, nrmse=0.1)
    steps = np.ones(144, np.float32)[::2]
    with raises(featjnd.NonContiguousError, "NonContiguous", match="steps"):
        featjnd.quantize(x, steps)
    # Size-1 dimensions may have any stride: still contiguous.
    featjnd.token_tolerance(np.abs(x[:1]) + 1)
    featjnd.token_tolerance(np.abs(x[:, :, :1]) + 1)


def test_overlapping_and_read_only_outputs(rng):
    x = feature(rng, (2, 3, 4, 4), np.float32)
    steps = np.ones(32, np.float32)
    with raises(featjnd.ArgError, "Arg", match="overlaps"):
        featjnd.quantize(x, steps, token_sse=steps)
    buf = np.empty(x.size + 8, np.float32)
    with raises(featjnd.ArgError, "Arg", match="overlaps"):
        featjnd.quantize(x, steps, recon=buf[:x.size].reshape(x.shape), token_sse=buf[8:40])
    both = np.zeros(x.size + 1, np.float32)
    src, dst = both[1:].reshape(x.shape), both[:-1].reshape(x.shape)
    src[...] = x
    with raises(featjnd.ArgError, "Arg", match="overlaps"):
        featjnd.perturb(src, nrmse=0.1, out=dst)  # partial overlap (the same memory is in place)
    j = np.abs(x) + 1
    with raises(featjnd.ArgError, "Arg", match="overlaps"):
        featjnd.perturb(j, j, nrmse=0.1, in_place=True)
    ro = np.empty(32, np.float32)
    ro.flags.writeable = False
    with raises(featjnd.ArgError, "Arg", match="read-only"):
        featjnd.token_tolerance(np.abs(x) + 1, out=ro)


def test_unreachable_budget(rng):
    x = feature(rng, (1, 4, 4, 4), np.float32)
    jt = np.ones(16, np.float32)
    with raises(featjnd.UnreachableError, "Unreachable", match="mean square") as e:
        featjnd.allocate_steps_measured(jt, x, 1e6)
    assert e.value.budget == 1e6
    with raises(featjnd.UnreachableError, "Unreachable", match="16 bits"):
        featjnd.allocate_steps_measured(jt, x * 1e6, 1e-6)


def test_overflowing_strength(rng):
    x = feature(rng, (2, 64), np.float16)
    before = x.copy()
    with raises(featjnd.ResultOverflowError, "Overflow"):
        featjnd.perturb(x, nrmse=1e6, in_place=True)
    assert np.array_equal(x, before)


def test_not_an_array():
    with raises(featjnd.ArgError, "Arg", match="expected an array"):
        featjnd.quantize([[1.0]], np.ones(1, np.float32), layout="ntc")


def test_bits_follow_the_one_rule_of_every_surface(rng):
    # contract §9: 8 or 16, and 0 for the default 8, exactly as the C ABI takes them.
    x = feature(rng, (1, 2, 4, 4), np.float32)
    steps = np.full(16, 0.25, np.float32)  # T = N·H·W at patch 1
    default = featjnd.quantize(x, steps, bits=8)
    zero = featjnd.quantize(x, steps, bits=0)
    assert zero.symbols.dtype == np.int8 and np.array_equal(zero.symbols, default.symbols)
    assert list(zero.histogram) == list(default.histogram) and len(zero.histogram) == 255
    wide = featjnd.quantize(x, steps, bits=16)
    assert wide.symbols.dtype == np.int16 and len(wide.histogram) == 512
    for b in (1, 7, 9, 15, 17, 32):
        with raises(featjnd.ArgError, "Arg", match="bits"):
            featjnd.quantize(x, steps, bits=b)
