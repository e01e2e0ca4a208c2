"""Read a PyTorch state dict saved in the legacy (non-zip) format with numpy alone.

The file is a sequence of pickles: the magic number, the protocol version, system
info, the state dict (each tensor a call to ``torch._utils._rebuild_tensor_v2`` on a
storage named by a persistent id), the list of storage keys; then, for each key in that
order, the storage as a little-endian int64 element count and its raw little-endian data.

A pickle can run any code when loaded, so the unpickler here resolves only the few names
a state dict needs and refuses everything else before anything is called.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from components.core.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class CheckpointError(UserError):
    """A file that is not a plain PyTorch state dict of float/long tensors: one line."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Tensor:
    """A tensor before its storage is read: a view (offset, shape, strides) of a storage."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, strides: tuple):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), tuple(strides)


class _Storage:
    def __init__(self, key: str, storage_type: _StorageType, size: int):
        self.key, self.type, self.size = key, storage_type, size
        self.data: np.ndarray | None = None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, _Storage):
        raise CheckpointError("malformed checkpoint: a tensor without a storage")
    return _Tensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


# The only names a state dict's pickle may load (each storage type a fresh object per
# lookup, so a crafted file cannot change one that another file's reading sees).
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor_v2,
    ("torch", "FloatStorage"): lambda: _StorageType("FloatStorage"),
    ("torch", "LongStorage"): lambda: _StorageType("LongStorage"),
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: str):
        super().__init__(file, encoding="utf-8")
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]()
        except KeyError:
            raise CheckpointError(
                f"{self.path}: refused to load {module}.{name} (a PyTorch state dict "
                f"needs only tensors; this file may run code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unsupported persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, size = pid[:5]
        if not isinstance(size, int) or size < 0:
            raise CheckpointError(f"{self.path}: bad storage size {size!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{self.path}: storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(str(key), storage_type, int(size))
        return self.storages[key]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a legacy-format PyTorch state dict file, read with numpy."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    file_size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(2) == b"PK":
            raise CheckpointError(f"{path}: a zip-format PyTorch file (torch >= 1.6); only the legacy format is read")
        f.seek(0)
        unpickler = _RestrictedUnpickler(f, str(path))

        def load() -> Any:
            try:
                return unpickler.load()
            except CheckpointError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise CheckpointError(f"{path}: not a PyTorch checkpoint ({exc})") from None

        if load() != MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        if load() != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported PyTorch protocol version")
        load()  # sys info: endianness and type sizes
        state = load()
        keys = load()
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise CheckpointError(f"{path}: not a state dict")
        for key in keys:
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise CheckpointError(f"{path}: storage {key!r} is not used by any tensor")
            count = np.frombuffer(f.read(8), "<i8")
            if count.size != 1 or int(count[0]) != storage.size:
                raise CheckpointError(f"{path}: storage {key!r} is truncated or its size is wrong")
            nbytes = storage.size * storage.type.dtype.itemsize
            if nbytes > file_size - f.tell():  # before reading: a crafted size must not allocate
                raise CheckpointError(f"{path}: truncated (storage {key!r})")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointError(f"{path}: truncated (storage {key!r})")
            storage.data = np.frombuffer(raw, storage.type.dtype)

    return _tensors(state, path, file_size)


# A state dict's tensors may share a storage (tied weights): together they may hold
# this many times the file's size, and no more, whatever their shapes and strides say.
MAX_TENSOR_BYTES_PER_FILE_BYTE = 2


def _tensors(state: dict, path: Path, file_size: int) -> dict[str, np.ndarray]:
    """The state dict's tensors as arrays, each checked against its storage before
    anything is allocated: no negative size, within the storage, no more elements than
    the storage holds (zero or overlapping strides would repeat them), and all together
    bounded by the file's size."""
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        data = tensor.storage.data
        if data is None:
            raise CheckpointError(f"{path}: storage of {name!r} missing")
        if any(n < 0 for n in tensor.shape):
            raise CheckpointError(f"{path}: entry {name!r} has a negative size {tensor.shape}")
        elements = int(np.prod(tensor.shape, dtype=object))
        if elements > data.size:
            raise CheckpointError(
                f"{path}: entry {name!r} has {elements} elements, more than its storage holds ({data.size})"
            )
        total += elements * data.dtype.itemsize
        if total > MAX_TENSOR_BYTES_PER_FILE_BYTE * file_size:
            raise CheckpointError(
                f"{path}: its tensors add up to {total} bytes or more, more than "
                f"{MAX_TENSOR_BYTES_PER_FILE_BYTE} x the {file_size} bytes the file holds"
            )
        if elements == 0:
            out[str(name)] = np.zeros(tensor.shape, data.dtype.newbyteorder("="))
            continue
        needed = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides)) + 1
        if tensor.offset < 0 or any(s < 0 for s in tensor.strides) or needed > data.size:
            raise CheckpointError(f"{path}: entry {name!r} lies outside its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[tensor.offset :], tensor.shape, tuple(s * itemsize for s in tensor.strides), writeable=False
        )
        out[str(name)] = np.ascontiguousarray(view, dtype=data.dtype.newbyteorder("="))
    return out
