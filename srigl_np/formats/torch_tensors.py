"""The tensor finaliser of the PyTorch reader: the records the unpickler built, made values.

``_Finalizer`` walks the object graph once, replacing each record by its value and
keeping shared objects shared. Each tensor's storage is read once; its size, stride
and offset must lie inside the storage *before* a view is taken, stride-0 views may
not expand the file's storage bytes more than 4x (plus ``_EXPANSION_SLACK``), and each
view is copied into a NumPy array of native byte order.
"""

import math

import numpy as np

from .torch_records import (_ELEMENTS, Placeholder, _Malformed, _NumpyArray, _NumpyDtype,
                            _PlaceholderType, _placeholder_class, _StorageRef, _StorageType,
                            _tensor_ref, _TensorRef)

_EXPANSION_SLACK = 1 << 26      # bytes tensors may occupy beyond 4x the storages' bytes


class _Finalizer:
    """Replaces records by their values through the whole graph, keeping shared objects
    shared: _TensorRef -> ndarray, _DictRecord -> dict, numpy records -> numpy values;
    containers are rebuilt around them and Placeholder instances updated in place."""

    _ATOMS = (str, bytes, int, float, bool, complex, type(None), np.generic, np.ndarray,
              bytearray, _PlaceholderType)
    _IN_PROGRESS = object()

    def __init__(self, archive, byteorder):
        self.archive, self.byteorder = archive, byteorder
        self.memo = {}
        self.bytes_left = 4 * archive.storage_bytes() + _EXPANSION_SLACK

    def __call__(self, obj):
        if isinstance(obj, self._ATOMS):
            return obj
        done = self.memo.get(id(obj))
        if done is self._IN_PROGRESS:
            raise _Malformed("pickle builds a tuple or set that contains itself "
                             "(through a list or dict)")
        if done is not None:
            return done
        if isinstance(obj, dict):
            new = self.memo[id(obj)] = {}
            for key, value in obj.items():
                new[self(key)] = self(value)
            return new
        if isinstance(obj, list):
            new = self.memo[id(obj)] = []
            new.extend(self(item) for item in obj)
            return new
        if isinstance(obj, (tuple, set, frozenset)):
            self.memo[id(obj)] = self._IN_PROGRESS
            new = self.memo[id(obj)] = type(obj)(self(item) for item in obj)
            return new
        if isinstance(obj, Placeholder):
            self.memo[id(obj)] = obj
            obj.args, obj.kwargs = self(obj.args), self(obj.kwargs)
            obj.state = self(obj.state)
            obj.dictitems, obj.listitems = self(obj.dictitems), self(obj.listitems)
            return obj
        new = self.memo[id(obj)] = self._value(obj)
        return new

    def _value(self, record):
        if isinstance(record, _TensorRef):
            return self._tensor(record)
        if isinstance(record, _StorageRef):  # a bare storage: its elements, flat
            flat = _tensor_ref(record, record.dtype, 0, (record.numel,), (1,), None)
            return self._tensor(flat)
        if isinstance(record, _NumpyDtype):
            return record.dtype
        if isinstance(record, _NumpyArray):
            if record.array is None:
                raise _Malformed("numpy array was never given its data")
            return record.array
        if isinstance(record, _StorageType):
            module, _, name = record.qualname.rpartition(".")
            return _placeholder_class(module, name)
        return record  # range, slice and other built-in values the unpickler makes itself

    def _tensor(self, tensor):
        raw_code, result_dtype = _ELEMENTS[tensor.dtype]
        itemsize = np.dtype(raw_code).itemsize
        storage_bytes = tensor.storage.nbytes
        if storage_bytes % itemsize:
            raise _Malformed(f"storage {tensor.storage.key} holds {storage_bytes} bytes, not a "
                             f"whole number of {tensor.dtype} elements")
        n_elements = math.prod(tensor.size)
        if n_elements == 0:
            needed = tensor.offset * itemsize
        else:
            last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
            needed = (last + 1) * itemsize
        if needed > storage_bytes:
            raise _Malformed(f"tensor of size {tensor.size}, stride {tensor.stride} at offset "
                             f"{tensor.offset} needs {needed} bytes of storage "
                             f"{tensor.storage.key}, which has only {storage_bytes}")
        result_bytes = n_elements * np.dtype(result_dtype).itemsize
        if result_bytes > self.bytes_left:
            raise _Malformed(f"tensors would expand to more than 4x the file's storage bytes "
                             f"(a tensor of size {tensor.size} from a {storage_bytes}-byte "
                             f"storage)")
        self.bytes_left -= result_bytes
        data = self.archive.storage(tensor.storage)
        order = "<" if self.byteorder == "little" else ">"
        flat = np.frombuffer(data, dtype=np.dtype(raw_code).newbyteorder(order),
                             count=storage_bytes // itemsize)
        if n_elements == 0:
            try:
                return np.zeros(tensor.size, dtype=result_dtype)
            except ValueError:
                raise _Malformed(f"tensor size {tensor.size} is too big") from None
        # A dimension of size 1 never steps, whatever stride the file gives it.
        strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(tensor.size, tensor.stride))
        view = np.lib.stride_tricks.as_strided(flat[tensor.offset:], shape=tensor.size,
                                               strides=strides, writeable=False)
        if tensor.dtype == "bfloat16":  # the top 16 bits of a float32
            array = (view.astype(np.uint32) << 16).view(np.float32)
        elif tensor.dtype == "bool":
            array = view != 0
        else:
            array = np.array(view, dtype=result_dtype, order="C")
        if tensor.negative:
            array = np.negative(array)
        if tensor.conjugate:
            array = np.conjugate(array)
        return np.asarray(array)  # ufuncs give 0-d tensors back as scalars
