"""What a PyTorch file is read into, before the tensors exist: the torch reader's values.

``torch_pickle``'s rebuild functions return the inert records here while the pickle is
read (a storage reference, a tensor to rebuild, numpy dtypes and arrays, an OrderedDict
being filled); ``torch_tensors._Finalizer`` then replaces them by their values. A global
the reader does not know becomes a ``Placeholder``, which records how it was called and
runs nothing. Also here: the element types we can rebuild, bounded reprs of values from
the file, and ``_Malformed``, the one error every part of the reader raises (``load``
names the file). These are the reader's internals; ``torch_format`` is its front door.
"""

import math
import re
import reprlib

import numpy as np


class _Malformed(Exception):
    """Raised inside the reader; ``load`` re-raises it as a TorchFormatError naming the file."""


class _ShortRepr(reprlib.Repr):
    """repr for values from the file, bounded however large or repetitive they are (a
    pickle can reference one long string a million times in two bytes each)."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxtuple, self.maxlist, self.maxdict = 3, 8, 4, 4
        self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = 40

    def repr_int(self, value, level):
        if value.bit_length() > 128:
            return f"<int of {value.bit_length()} bits>"
        return repr(value)

    def repr_bytes(self, value, level):
        return repr(value[:self.maxstring]) + ("..." if len(value) > self.maxstring else "")

    repr_bytearray = repr_bytes
    repr__DictRecord = reprlib.Repr.repr_dict


_show = _ShortRepr().repr


def _one_line(error):
    return " ".join(str(error).split())[:200] or type(error).__name__


# -- placeholders -----------------------------------------------------------------------

class _PlaceholderType(type):
    def __repr__(cls):
        if cls is Placeholder:
            return super().__repr__()
        return f"<placeholder {cls.module}.{cls.name}>"


class Placeholder(metaclass=_PlaceholderType):
    """An inert stand-in for a class or callable a checkpoint names and we do not run.

    A global ``module.name`` the file refers to becomes a subclass of Placeholder with
    class attributes ``module`` and ``name``; calling it (pickle's REDUCE and NEWOBJ)
    makes an instance that records ``args`` (and ``kwargs``), and pickle's BUILD stores
    the object's ``state``. Items a dict or list subclass would have received land in
    ``dictitems`` and ``listitems``. Nothing here imports or calls anything real, and an
    instance is not callable. ``is_placeholder`` tells both kinds apart from real values.
    """

    module = ""
    name = ""
    args = ()
    kwargs = {}
    state = None

    def __new__(cls, *args, **kwargs):
        placeholder = object.__new__(cls)
        placeholder.args = args
        placeholder.kwargs = kwargs
        placeholder.state = None
        placeholder.dictitems = {}
        placeholder.listitems = []
        return placeholder

    def __init__(self, *args, **kwargs):
        pass  # __new__ has recorded everything; REDUCE calls cls(*args), NEWOBJ only __new__.

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.dictitems[key] = value

    def append(self, item):
        self.listitems.append(item)

    def extend(self, items):
        self.listitems.extend(items)

    def __repr__(self):
        return f"<placeholder {self.module}.{self.name}>"


def is_placeholder(obj, qualname=None):
    """Whether ``obj`` is a Placeholder class or instance (for ``qualname`` such as
    "omegaconf.dictconfig.DictConfig": one standing for that global)."""
    cls = obj if isinstance(obj, type) else type(obj)
    if not issubclass(cls, Placeholder):
        return False
    return qualname is None or f"{obj.module}.{obj.name}" == qualname


def _placeholder_class(module, name):
    return _PlaceholderType("Placeholder", (Placeholder,), {
        "module": module, "name": name, "__module__": __name__,
        "__qualname__": "Placeholder"})


# -- dtypes -----------------------------------------------------------------------------

# Element types we can rebuild: torch dtype name -> (NumPy code the storage bytes are read
# as, NumPy dtype of the result). bfloat16 is read as its 16 bits and widened to float32
# (NumPy has no bfloat16); bool is read as bytes so stray non-0/1 bytes still mean True.
_ELEMENTS = {
    "float32": ("f4", "float32"), "float64": ("f8", "float64"),
    "float16": ("f2", "float16"), "bfloat16": ("u2", "float32"),
    "bool": ("u1", "bool"), "uint8": ("u1", "uint8"), "int8": ("i1", "int8"),
    "int16": ("i2", "int16"), "int32": ("i4", "int32"), "int64": ("i8", "int64"),
    "uint16": ("u2", "uint16"), "uint32": ("u4", "uint32"), "uint64": ("u8", "uint64"),
    "complex64": ("c8", "complex64"), "complex128": ("c16", "complex128"),
}

# Legacy typed storage classes (torch.FloatStorage, ...), which torch 2.x still writes
# for these dtypes; dtypes newer than that list (uint16/32/64, float8) come as
# torch.storage.UntypedStorage (bytes) with the dtype passed to _rebuild_tensor_v3.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "BoolStorage": "bool", "ByteStorage": "uint8",
    "CharStorage": "int8", "ShortStorage": "int16", "IntStorage": "int32",
    "LongStorage": "int64", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}

# torch.<name> dtype globals (and their aliases) -> our dtype names.
_TORCH_DTYPES = {name: name for name in _ELEMENTS} | {
    "float": "float32", "double": "float64", "half": "float16", "short": "int16",
    "int": "int32", "long": "int64", "cfloat": "complex64", "cdouble": "complex128"}


def _itemsize(dtype_name):
    return np.dtype(_ELEMENTS[dtype_name][0]).itemsize


# -- what the pickle builds: inert records, finished by _Finalizer ------------------------

class _Record:
    """Base of the objects our rebuild functions return while the pickle is read. They
    refuse pickle's BUILD, so a file cannot rewrite their fields."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Malformed(f"pickle tries to set the state of a {self._what}")


class _StorageType(_Record):
    __slots__ = ("qualname", "dtype")
    _what = "storage type"

    def __init__(self, qualname, dtype):
        self.qualname, self.dtype = qualname, dtype


class _StorageRef(_Record):
    """('storage', storage_type, key, location, numel) from persistent_load; numel counts
    elements of the storage type (bytes for UntypedStorage)."""

    __slots__ = ("key", "dtype", "numel", "location")
    _what = "storage"

    def __init__(self, key, dtype, numel, location):
        self.key, self.dtype, self.numel, self.location = key, dtype, numel, location

    @property
    def nbytes(self):
        return self.numel * _itemsize(self.dtype)


class _TensorRef(_Record):
    """A tensor to rebuild: ``dtype`` elements at ``offset + sum(i * stride)`` of ``storage``
    (offset and stride in elements of ``dtype``)."""

    __slots__ = ("storage", "dtype", "offset", "size", "stride", "negative", "conjugate")
    _what = "tensor"

    def __init__(self, storage, dtype, offset, size, stride, metadata):
        self.storage, self.dtype = storage, dtype
        self.offset, self.size, self.stride = offset, size, stride
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict) or not set(metadata) <= {"neg", "conj"}:
            raise _Malformed(f"tensor metadata must be a dict with keys neg/conj, "
                             f"got {_show(metadata)}")
        self.negative, self.conjugate = bool(metadata.get("neg")), bool(metadata.get("conj"))


class _DictRecord(dict):
    """An OrderedDict (or Counter) being filled; BUILD's state (a state_dict's
    ``_metadata``) is accepted and dropped."""

    __slots__ = ()

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _Malformed(f"OrderedDict state must be a dict, got {type(state).__name__}")


class _NumpyDtype(_Record):
    __slots__ = ("dtype",)
    _what = "numpy dtype"

    def __init__(self, spec):
        if not isinstance(spec, str) or not re.fullmatch(r"[biufc]\d{1,2}", spec):
            raise _Malformed(f"numpy dtype {_show(spec)} is not a plain numeric type")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise _Malformed(f"numpy dtype {_show(spec)} is not a plain numeric type") from None

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, ...).
        if (not isinstance(state, tuple) or len(state) < 5 or state[1] not in "<>|="
                or state[2:5] != (None, None, None)):
            raise _Malformed(f"numpy dtype state {_show(state)} is not a plain numeric type")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NumpyArray(_Record):
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b"b") followed by BUILD."""

    __slots__ = ("array",)
    _what = "numpy array"

    def __init__(self, cls):
        if not is_placeholder(cls, "numpy.ndarray"):
            raise _Malformed(f"numpy _reconstruct of {_show(cls)}, expected numpy.ndarray")
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Malformed(f"numpy array state {_show(state)} is not understood")
        shape, dtype, fortran, data = state[-4:]
        self.array = _array_from_bytes(data, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(data, dtype, shape, order):
    if isinstance(data, list):
        raise _Malformed("numpy object arrays are not supported")
    if not isinstance(data, (bytes, bytearray)) or not isinstance(dtype, _NumpyDtype):
        raise _Malformed("numpy array data must be bytes of a plain numeric dtype")
    shape = _int_tuple(shape, "numpy array shape")
    if order not in ("C", "F"):
        raise _Malformed(f"numpy array order must be 'C' or 'F', got {_show(order)}")
    if math.prod(shape) * dtype.dtype.itemsize != len(data):
        raise _Malformed(f"numpy array of shape {_show(shape)} and dtype {dtype.dtype} needs "
                         f"{math.prod(shape) * dtype.dtype.itemsize} bytes, got {len(data)}")
    return _native(np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order=order))


def _native(array):
    """A writable copy of ``array`` in native byte order; bools as 0/1 whatever the bytes."""
    if array.dtype.kind == "b":
        return np.asarray(array.view(np.uint8) != 0)  # 0-d stays an array
    return array.astype(array.dtype.newbyteorder("="), order="K")


def _int_tuple(value, what):
    if (not isinstance(value, (tuple, list))
            or not all(type(n) is int and 0 <= n < 2**63 for n in value)):
        raise _Malformed(f"{what} must be a tuple of non-negative int64s, got {_show(value)}")
    return tuple(value)


def _tensor_ref(storage, dtype, offset, size, stride, metadata):
    size = _int_tuple(size, "tensor size")
    if len(size) > 64:  # NumPy's limit
        raise _Malformed(f"tensor has {len(size)} dimensions, at most 64 can be read")
    if not isinstance(stride, (tuple, list)) or not all(
            type(n) is int and -2**63 <= n < 2**63 for n in stride):
        raise _Malformed(f"tensor stride must be a tuple of ints, got {_show(stride)}")
    if any(n < 0 for n in stride):
        raise _Malformed(f"tensor stride {_show(tuple(stride))} has a negative step")
    if len(stride) != len(size):
        raise _Malformed(f"tensor stride {_show(tuple(stride))} does not fit size {size}")
    if type(offset) is not int or not 0 <= offset < 2**63:
        raise _Malformed(f"tensor storage offset must be a non-negative int, "
                         f"got {_show(offset)}")
    return _TensorRef(storage, dtype, offset, size, tuple(stride), metadata)
