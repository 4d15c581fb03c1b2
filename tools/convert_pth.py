#!/usr/bin/env python3
"""Converts a legacy (non-zip) PyTorch ``.pth`` state dict to safetensors, with the standard
library only (no torch, no numpy).

Usage:  python3 tools/convert_pth.py IN.pth OUT.safetensors [--list] [--skip-int]

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``, and every file
written by torch < 1.6) is a sequence of pickles followed by raw storages:

  1. pickle: the magic number 0x1950a86a20f9469cfc6c
  2. pickle: the protocol version (1001)
  3. pickle: sys_info (endianness, type sizes)
  4. pickle: the object itself; every tensor storage in it is a *persistent id*
     ``('storage', storage_type, key, location, numel[, view_metadata])`` and every tensor is
     ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
  5. pickle: the list of storage keys, in the order the storages follow
  6. for each key: an 8-byte little-endian element count, then count * element_size raw bytes
     (native byte order; sys_info says little endian, which is checked)

Nothing but the handful of names above is resolved while unpickling (``find_class`` refuses
everything else), so a hostile file cannot run code.

Output: one safetensors file (8-byte little-endian header length, a JSON header padded with
spaces to a multiple of 8 bytes, then the tensor bytes), written by hand. Tensors are laid out in
sorted name order, each C-contiguous (a strided or offset view is gathered element by element).

Dtypes: float tensors are written as F32 (float16/float64 storages are converted to float32).
Integer tensors keep their width (LongStorage -> I64, IntStorage -> I32, ...): in practice these
are BatchNorm's ``num_batches_tracked`` counters (the torchvision MobileNetV2 file has 52 of them
next to its 262 float tensors). They are kept so the output is the complete state dict under the
torchvision names; eval-mode inference never reads them, and featjnd's strict loader accepts them
only under the name of one of the model's BatchNorm layers. ``--skip-int`` drops them instead.
"""
import collections
import io
import json
import os
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

# storage class name -> (struct code, element size, is float, safetensors dtype written)
STORAGES = {
    "FloatStorage": ("f", 4, True, "F32"),
    "DoubleStorage": ("d", 8, True, "F32"),
    "HalfStorage": ("e", 2, True, "F32"),
    "LongStorage": ("q", 8, False, "I64"),
    "IntStorage": ("i", 4, False, "I32"),
    "ShortStorage": ("h", 2, False, "I16"),
    "CharStorage": ("b", 1, False, "I8"),
    "ByteStorage": ("B", 1, False, "U8"),
    "BoolStorage": ("?", 1, False, "BOOL"),
}
# safetensors dtype -> struct code of what is written
OUT_CODES = {"F32": "f", "I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B", "BOOL": "?"}


class StorageType:
    def __init__(self, name):
        self.name = name
        self.code, self.elsize, self.is_float, self.out_dtype = STORAGES[name]


class StorageRef:
    """A storage named in the object pickle; its bytes arrive after the pickles."""

    def __init__(self, key, stype, numel):
        self.key, self.stype, self.numel = key, stype, numel
        self.data = None  # bytes, filled in once the raw section is read


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def numel(self):
        n = 1
        for s in self.size:
            n *= s
        return n

    def values(self):
        """The elements in C order, as a list of Python numbers."""
        st = self.storage
        code, es = st.stype.code, st.stype.elsize
        n = self.numel()
        if n == 0:
            return []
        contiguous = True
        expect = 1
        for sz, sd in zip(reversed(self.size), reversed(self.stride)):
            if sz != 1 and sd != expect:
                contiguous = False
            expect *= sz
        if contiguous:
            lo = self.offset * es
            return list(struct.unpack_from("<%d%s" % (n, code), st.data, lo))
        # General strided view: walk the index space in C order.
        flat = struct.unpack("<%d%s" % (st.numel, code), st.data)
        out = []
        idx = [0] * len(self.size)
        for _ in range(n):
            out.append(flat[self.offset + sum(i * s for i, s in zip(idx, self.stride))])
            for d in range(len(idx) - 1, -1, -1):
                idx[d] += 1
                if idx[d] < self.size[d]:
                    break
                idx[d] = 0
        return out


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *rest):
    if not isinstance(storage, StorageRef):
        raise ValueError("_rebuild_tensor_v2 on something that is not a storage")
    return TensorRef(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


class Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return rebuild_parameter
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise pickle.UnpicklingError("refusing to load %s.%s" % (module, name))

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError("unexpected persistent id %r" % (pid,))
        _, stype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (view_metadata) are not supported")
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError("unknown storage type %r" % (stype,))
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = StorageRef(key, stype, numel)
        return st


def load_legacy(path):
    """Returns (object, {storage key: StorageRef}) with every storage's bytes filled in."""
    with open(path, "rb") as fh:
        buf = fh.read()
    if buf[:2] == b"PK":
        raise ValueError("%s is a zip-format torch file, not the legacy format" % path)
    f = io.BytesIO(buf)
    storages = {}

    def plain():
        return Unpickler(f, storages).load()

    if plain() != MAGIC:
        raise ValueError("%s: bad magic number (not a legacy torch file)" % path)
    if plain() != PROTOCOL:
        raise ValueError("%s: unsupported protocol version" % path)
    sys_info = plain()
    if not sys_info.get("little_endian", False):
        raise ValueError("%s: big-endian files are not supported" % path)
    obj = plain()
    keys = plain()
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("%s: truncated before storage %s" % (path, key))
        (count,) = struct.unpack("<q", head)
        st = storages.get(key)
        if st is None:
            raise ValueError("%s: storage %s is not used by the object" % (path, key))
        if count != st.numel:
            raise ValueError("%s: storage %s has %d elements, the pickle says %d" % (path, key, count, st.numel))
        nbytes = count * st.stype.elsize
        st.data = f.read(nbytes)
        if len(st.data) != nbytes:
            raise ValueError("%s: storage %s truncated" % (path, key))
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise ValueError("%s: storages without data: %s" % (path, missing))
    if f.read(1):
        raise ValueError("%s: trailing bytes after the last storage" % path)
    return obj, storages


def state_dict(obj):
    """The name -> TensorRef mapping (accepts a bare state dict or {'state_dict': ...})."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("the file does not hold a state dict (got %s)" % type(obj).__name__)
    out = collections.OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, TensorRef):
            raise ValueError("entry %r is not a tensor" % (k,))
        out[k] = v
    return out


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, safetensors dtype, shape, list of values), written in that order."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, vals in tensors:
        n = len(vals) * struct.calcsize("<" + OUT_CODES[dtype])
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(hb)))
        out.write(hb)
        for _, dtype, _, vals in tensors:
            out.write(struct.pack("<%d%s" % (len(vals), OUT_CODES[dtype]), *vals))
    os.replace(tmp, path)


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    src, dst = argv[1], argv[2]
    obj, _ = load_legacy(src)
    sd = state_dict(obj)
    skip_int = "--skip-int" in argv
    tensors, skipped = [], []
    for name in sorted(sd):
        t = sd[name]
        if skip_int and not t.storage.stype.is_float:
            skipped.append(name)
            continue
        tensors.append((name, t.storage.stype.out_dtype, t.size, t.values()))
    if skipped:
        sys.stderr.write("convert_pth: skipped %d integer tensor(s)\n" % len(skipped))
    write_safetensors(dst, tensors, {"source": src.rsplit("/", 1)[-1], "converter": "featjnd tools/convert_pth.py"})
    if "--list" in argv:
        for name, dtype, shape, _ in tensors:
            print(name, dtype, list(shape))
    sys.stderr.write("convert_pth: wrote %d tensors to %s\n" % (len(tensors), dst))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
