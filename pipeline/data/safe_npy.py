"""Read a `.npy` file without running code from it.

`np.load` with pickles allowed unpickles object arrays, and a pickle can call any function: a
course file passed between students could run a command while it loads. Here an object array
is unpickled with an allow-list: numpy arrays of plain dtypes, lists, tuples, dicts, strings,
bytes, numbers, booleans and None. numpy's own reconstructors are replaced by stand-ins that
only record shape, dtype and data; the arrays are built afterwards with `np.frombuffer`, after
the data's size is checked against the shape, so a crafted pickle can neither call a function
nor make numpy allocate more than the file holds.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np

PLAIN_KINDS = "biufcUS"  # bool, signed, unsigned, float, complex, str, bytes
PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None))


class UnsafeFile(ValueError):
    """A `.npy` file holding something other than plain data; the message says what."""


class _Dtype:
    """Stand-in for `numpy.dtype(spec, align, copy)` in a pickle."""

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise UnsafeFile(f"dtype spec {spec!r} is not a string")
        self.spec, self.state = spec, None

    def __setstate__(self, state):
        self.state = state

    def build(self) -> np.dtype:
        try:
            dtype = np.dtype(self.spec)
        except TypeError as err:
            raise UnsafeFile(f"dtype {self.spec!r} is not a numpy dtype") from err
        if dtype.kind not in PLAIN_KINDS + "O":
            raise UnsafeFile(f"dtype {self.spec!r} (kind {dtype.kind!r}) is not a plain dtype")
        if self.state is not None:
            if not isinstance(self.state, tuple) or len(self.state) < 6 or any(s is not None for s in self.state[2:5]):
                raise UnsafeFile(f"dtype {self.spec!r}: structured or sub-array dtypes are not accepted")
            order, size = self.state[1], self.state[5]
            if dtype.itemsize == 0 and dtype.kind in "US" and isinstance(size, int) and size > 0:
                dtype = np.dtype(f"{dtype.kind}{size // (4 if dtype.kind == 'U' else 1)}")
            if order in ("<", ">"):
                dtype = dtype.newbyteorder(order)
        return dtype


class _Array:
    """Stand-in for `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` and its state."""

    def __init__(self, cls, shape, code):
        if cls is not _NDARRAY:
            raise UnsafeFile(f"array reconstruction of {cls!r} is not accepted")
        self.state = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[2], _Dtype):
            raise UnsafeFile("array state is not (version, shape, dtype, fortran, data)")
        self.state = state


class _Scalar:
    """Stand-in for `numpy.core.multiarray.scalar(dtype, data)` (a numpy number in a dict, say)."""

    def __init__(self, dtype, data=None):
        if not isinstance(dtype, _Dtype) or not isinstance(data, bytes):
            raise UnsafeFile("numpy scalar is not (dtype, bytes)")
        self.dtype, self.data = dtype, data


_NDARRAY = object()  # what `numpy.ndarray` stands for inside the pickle


def _latin1(text, encoding="latin1"):
    """`_codecs.encode`, which Python 2-era pickles use for bytes: text to bytes only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFile(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not accepted")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy.core.multiarray", "scalar"): _Scalar,
    ("numpy._core.multiarray", "scalar"): _Scalar,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFile(f"refused to load {module}.{name}: only plain data (numpy arrays, lists, dicts, "
                             f"strings, numbers, None) is accepted") from None

    def persistent_load(self, pid):
        raise UnsafeFile("persistent references are not accepted")


def _materialize(obj):
    """Plain Python and numpy objects from the unpickled stand-ins; anything else is refused."""
    if isinstance(obj, PLAIN_TYPES):
        return obj
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    if isinstance(obj, dict):
        return {_materialize(k): _materialize(v) for k, v in obj.items()}
    if isinstance(obj, _Scalar):
        dtype = obj.dtype.build()
        if dtype.kind == "O" or len(obj.data) != dtype.itemsize:
            raise UnsafeFile(f"numpy scalar of dtype {dtype} has {len(obj.data)} bytes")
        return np.frombuffer(obj.data, dtype)[0]
    if isinstance(obj, _Array) and obj.state is not None:
        _, shape, dtype, fortran, data = obj.state
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise UnsafeFile(f"array shape {shape!r} is not a tuple of sizes")
        dtype, n, order = dtype.build(), math.prod(shape), "F" if fortran else "C"
        if dtype.kind == "O":
            if not isinstance(data, list) or len(data) != n:
                raise UnsafeFile(f"object array of shape {shape} does not hold {n} items")
            flat = np.empty(n, dtype=object)
            for i, item in enumerate(data):
                flat[i] = _materialize(item)
            return flat.reshape(shape, order=order)
        if not isinstance(data, bytes) or len(data) != n * dtype.itemsize:
            raise UnsafeFile(f"array of shape {shape} and dtype {dtype} does not hold {n * dtype.itemsize} bytes")
        return np.frombuffer(data, dtype).reshape(shape, order=order).copy()
    raise UnsafeFile(f"refused a {type(obj).__name__} object: only plain data is accepted")


def load(path: str | os.PathLike) -> np.ndarray:
    """The array in a `.npy` file; object arrays are unpickled with the allow-list above.

    Raises `UnsafeFile` for content outside it and `ValueError` for a file that is not a
    readable `.npy` (wrong magic, truncated header or data).
    """
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f".npy format version {version} is not supported (1.0 or 2.0)")
            shape, fortran, dtype = read_header[version](fh)
        except (ValueError, EOFError) as err:
            raise ValueError(f"not a .npy file or its header is damaged ({err})") from None
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        if dtype != np.dtype(object):
            raise UnsafeFile(f"dtype {dtype} mixes objects into a structured dtype")
        try:
            loaded = _materialize(_Unpickler(fh).load())
        except UnsafeFile:
            raise
        except RecursionError:
            raise UnsafeFile("data is nested too deeply") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
            raise ValueError(f"the pickled object data is truncated or damaged ({type(err).__name__}: {err})") from None
    if not isinstance(loaded, np.ndarray) or loaded.shape != shape:
        raise UnsafeFile(f"data does not match the header: expected an array of shape {shape}")
    return loaded
