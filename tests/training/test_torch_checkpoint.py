"""The legacy PyTorch checkpoint reader on crafted files: what a tensor's shape and
strides may ask for is bounded by what the file holds, and a bad one is one line."""

from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest

from components.training.torch_checkpoint import MAGIC_NUMBER, PROTOCOL_VERSION, CheckpointError, read_state_dict


class _Storage:
    """What a legacy file's tensor points at: pickled as its persistent id."""

    def __init__(self, key: str, values: np.ndarray):
        self.key, self.values = key, values.astype("<f4")


@pytest.fixture
def write_checkpoint(tmp_path, monkeypatch):
    """``write(tensors) -> path``: a legacy-format state dict of ``{name: (storage,
    offset, shape, strides)}``, pickled as torch does (torch itself is not needed)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, storage, offset, shape, strides):
            self.args = (storage, offset, tuple(shape), tuple(strides), False, {})

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.values.size)
            return None

    def dumps(obj) -> bytes:
        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(obj)
        return buffer.getvalue()

    def write(tensors: dict) -> str:
        storages = {s.key: s for s, *_ in tensors.values()}
        state = {name: Tensor(*view) for name, view in tensors.items()}
        body = dumps(MAGIC_NUMBER) + dumps(PROTOCOL_VERSION) + dumps({}) + dumps(state) + dumps(list(storages))
        for storage in storages.values():
            body += np.array([storage.values.size], "<i8").tobytes() + storage.values.tobytes()
        path = tmp_path / "crafted.pth"
        path.write_bytes(body)
        return str(path)

    return write


def test_a_plain_state_dict_reads_back(write_checkpoint):
    weights = _Storage("0", np.arange(6))
    path = write_checkpoint({"w": (weights, 0, (2, 3), (3, 1)), "w_t": (weights, 0, (3, 2), (1, 3))})
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(state["w_t"], np.arange(6).reshape(2, 3).T)


def test_zero_strides_cannot_ask_for_more_elements_than_the_file_holds(write_checkpoint):
    """Was: one float and strides (0, 0) passed the bounds check, and ascontiguousarray
    allocated the whole shape (here 64 MiB; as easily 16 GiB from a few hundred bytes)."""
    one = _Storage("0", np.ones(1))
    path = write_checkpoint({"bomb": (one, 0, (4096, 4096), (0, 0))})
    with pytest.raises(CheckpointError, match=r"entry 'bomb' has 16777216 elements, more than its storage holds \(1\)"):
        read_state_dict(path)


def test_many_entries_on_one_storage_cannot_add_up_past_the_file(write_checkpoint):
    storage = _Storage("0", np.ones(4096))
    path = write_checkpoint({f"copy{k}": (storage, 0, (4096,), (1,)) for k in range(64)})
    with pytest.raises(CheckpointError, match=r"tensors add up to .* more than .* the file holds"):
        read_state_dict(path)


def test_a_negative_shape_is_one_line(write_checkpoint):
    """Was: ValueError from numpy's as_strided, a traceback."""
    path = write_checkpoint({"w": (_Storage("0", np.ones(8)), 0, (-2, 4), (4, 1))})
    with pytest.raises(CheckpointError, match=r"entry 'w' has a negative size \(-2, 4\)"):
        read_state_dict(path)
