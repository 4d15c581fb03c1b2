"""Device handling without a GPU: a hand-made DLPack producer that claims CUDA memory (nothing
is ever read from it) checks the dispatch, the mixed-device error, the stream handed to
``__dlpack__`` and the clean CudaError where no driver exists."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest

import featjnd


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]

_NAME = ctypes.c_char_p(b"dltensor")  # capsule names must outlive their capsules
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeCuda:
    """Claims `shape` float32 elements at a dummy, aligned address on CUDA device 0 (a fresh
    address range per array)."""

    next_addr = 0x7F0000000000

    def __init__(self, shape, device_type=2):
        self.addr = FakeCuda.next_addr
        FakeCuda.next_addr += 1 << 20
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.float32)
        self.device_type = device_type
        self.streams = []
        self.deleted = 0
        self._keep = []

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, stream=None, max_version=None):
        self.streams.append(stream)
        shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
        m = DLManagedTensor()
        m.dl_tensor = DLTensor(self.addr, DLDevice(self.device_type, 0), len(self.shape), DLDataType(2, 32, 1), shape, None, 0)

        def deleter(_p):
            self.deleted += 1

        cb = DELETER(deleter)
        m.deleter = cb
        self._keep += [shape, m, cb]
        return _new_capsule(ctypes.addressof(m), _NAME, None)


def test_mixed_devices():
    j = FakeCuda((1, 2, 2, 2))
    with pytest.raises(featjnd.DeviceError) as e:
        featjnd.token_tolerance(j, out=np.empty(4, np.float32))  # J on CUDA, out on the CPU
    assert e.value.kind == "MixedDevices" and isinstance(e.value, ValueError)
    assert j.deleted == 1  # the producer's deleter ran exactly once


def test_cuda_without_a_driver_is_a_clean_error():
    if ctypes.util.find_library("cuda"):
        print("SKIP test_cuda_without_a_driver_is_a_clean_error: a CUDA driver exists here")
        return
    j, out = FakeCuda((1, 2, 2, 2)), FakeCuda((4,))
    with pytest.raises(featjnd.CudaError) as e:
        featjnd.token_tolerance(j, out=out)
    assert e.value.kind == "CudaUnavailable" and "driver" in str(e.value)
    assert j.streams == [1] and out.streams == [1]  # DLPack: 1 is the legacy default stream
    with pytest.raises(featjnd.CudaError):
        featjnd.noise(4, out=out, stream=0x1234)
    assert out.streams[-1] == 0x1234

    class S:
        def __cuda_stream__(self):
            return (0, 77)

    with pytest.raises(featjnd.CudaError):
        featjnd.perturb(j, nrmse=0.1, out=FakeCuda((1, 2, 2, 2)), stream=S())
    assert j.streams[-1] == 77


def test_unsupported_device_type():
    with pytest.raises(featjnd.ArgError, match="device type 4"):
        featjnd.token_tolerance(FakeCuda((1, 2, 2, 2), device_type=4))
