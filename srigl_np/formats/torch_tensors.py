"""The tensor finaliser of the PyTorch reader: the records the unpickler built, made values.

``_Finalizer`` walks the object graph once, replacing each record by its value and
keeping shared objects shared. Each tensor's storage is read once; its size, stride
and offset must lie inside the storage *before* a view is taken, and each view is
copied into a NumPy array of native byte order, except where a tensor is its whole
storage in native order (every tensor of a ``torch.save``d state_dict): its array is
the storage's bytes as read, so reading a checkpoint holds its tensors once, not twice. What the tensors take is bounded by
what the file holds, before anything is allocated: all the tensors together (and the
compressed storages they inflate) at most ``_EXPANSION`` times the storage bytes the
file holds, plus ``_EXPANSION_SLACK``, and at most ``fileio.max_bytes()``. So
stride-0 views, many tensors over one storage, one tensor referenced many times (each
reference counts: whoever reads the graph copies it once per reference), a storage
declared huge behind a small tensor, or a compressed storage that inflates a
thousandfold cannot make a small file take gigabytes. (An honest file's tensors take
about what its storages hold: twice for bfloat16, which is widened, or for a storage
two tensors share.)
"""

import math

import numpy as np

from ..fileio import over_max_bytes
from .torch_records import (_ELEMENTS, Placeholder, _Malformed, _NumpyArray, _NumpyDtype,
                            _PlaceholderType, _placeholder_class, _StorageRef, _StorageType,
                            _tensor_ref, _TensorRef)

_EXPANSION = 4                  # tensors may take this many times the storage bytes held,
_EXPANSION_SLACK = 1 << 24      # plus this many bytes (an expanded scalar, a small file)


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
        self.present = archive.present_bytes()
        self.bytes_left = _EXPANSION * self.present + _EXPANSION_SLACK
        self.bytes_taken = 0
        self.owned = set()   # storages whose array a tensor took as its own

    def __call__(self, obj):
        if isinstance(obj, self._ATOMS):
            return obj
        done = self.memo.get(id(obj))
        if done is self._IN_PROGRESS:
            raise _Malformed("pickle builds a tuple or set that contains itself "
                             "(through a list or dict)")
        if done is not None:
            if isinstance(done, np.ndarray):   # one more reference to an array: a
                self._take(done.nbytes, done.shape)   # reader copies it once per reference
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
        self._take(result_bytes + self.archive.inflation(tensor.storage), tensor.size)
        data = self.archive.storage(tensor.storage)
        order = "<" if self.byteorder == "little" else ">"
        element = np.dtype(raw_code).newbyteorder(order)
        if self._can_own(tensor, data, element, result_dtype, n_elements * itemsize):
            # The tensor is its whole storage, as torch.save writes a state_dict's: it
            # takes the storage's array as its own, no copy (the read's peak stays ~1x).
            self.owned.add(tensor.storage.key)
            return data.view(result_dtype).reshape(tensor.size)
        flat = np.frombuffer(data, dtype=element, count=storage_bytes // itemsize)
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
            array = view.astype(np.uint32)
            array <<= 16
            array = array.view(np.float32)
        elif tensor.dtype == "bool":
            array = view != 0
        else:
            array = np.array(view, dtype=result_dtype, order="C")
        array = np.asarray(array)  # a comparison gives a 0-d tensor back as a scalar
        if tensor.negative:
            np.negative(array, out=array)
        if tensor.conjugate:
            np.conjugate(array, out=array)
        return array

    def _can_own(self, tensor, data, element, result_dtype, nbytes):
        """Whether ``tensor`` may be the storage's array itself: a writable array read
        for it alone (no tensor took it before), covered exactly (offset 0, C-contiguous,
        every byte), already in the result's dtype and native byte order, and with no
        negation or conjugation to apply in place."""
        if not (isinstance(data, np.ndarray) and data.flags.writeable
                and tensor.storage.key not in self.owned and nbytes == data.nbytes
                and tensor.offset == 0 and element == np.dtype(result_dtype)
                and element.isnative and not tensor.negative and not tensor.conjugate):
            return False
        contiguous, step = True, 1
        for n, stride in zip(reversed(tensor.size), reversed(tensor.stride)):
            contiguous &= n == 1 or stride == step
            step *= n
        return contiguous

    def _take(self, nbytes, shape):
        """Count ``nbytes`` more taken, for a tensor of ``shape``; refuse past the bounds."""
        if nbytes > self.bytes_left:
            raise _Malformed(f"tensors would expand to more than {_EXPANSION}x the "
                             f"{self.present} storage bytes the file holds (at a tensor of "
                             f"size {tuple(shape)})")
        reason = over_max_bytes(self.bytes_taken + nbytes, "its tensors would take")
        if reason:
            raise _Malformed(reason)
        self.bytes_left -= nbytes
        self.bytes_taken += nbytes
