"""Reading PyTorch checkpoints without PyTorch, treating every file as untrusted.

``load(path)`` reads the zip format ``torch.save`` writes by default since PyTorch 1.6::

    <top>/data.pkl            the object graph, a pickle (protocol 2 unless asked otherwise)
    <top>/data/<key>          one raw storage per key, in the byte order <top>/byteorder
                              names ("little" when it is absent)
    <top>/version, <top>/.format_version, <top>/.storage_alignment,
    <top>/.data/serialization_id        bookkeeping, not needed to read the tensors

``<top>`` is "archive" or the stem of the name the file was saved under.

What makes it safe
------------------
A pickle is a program: each global it names is imported and called. Here nothing the
file names is imported or run. ``_Unpickler.find_class`` maps a short allowlist of
(module, name) pairs (``_ALLOWED``) to rebuild functions of *this* module: tensors,
parameters, ``OrderedDict``, ``torch.Size``, ``torch.device``, numpy scalars, arrays and
dtypes of plain numeric types, bytes as protocol 2 spells them, and set, frozenset,
bytes, bytearray and complex with type-checked arguments. It refuses every global of a
module that reaches the interpreter, the OS, files or the network (``_DENIED_MODULES``),
and turns anything else into an inert ``Placeholder``, a class that only records the
name, the arguments it was called with and the state it was given. Before any of that,
``_check_opcodes`` walks the opcodes (pickletools.genops, which runs nothing) to refuse
memo slots that would make CPython's unpickler allocate gigabytes.

Tensors come from ``persistent_load`` as lazy storage references; after the pickle is
read, ``_Finalizer`` reads each storage once, checks that every tensor's size, stride and
offset lie inside its storage *before* taking a view, caps how far stride-0 views may
expand, and copies each view into a NumPy array. The zip is read with bounds checks of
our own: every entry must fit in the file and no two may overlap, no entry is read past
the size the central directory declares, and a compressed entry may not declare more than
deflate can give and is inflated at most to that size.

Every refusal is a ``TorchFormatError`` with one line naming the file and the problem.
"""

import io
import math
import os
import pickle
import pickletools
import re
import reprlib
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["Placeholder", "TorchFormatError", "is_placeholder", "load"]


class TorchFormatError(ValueError):
    """A file that is not a readable PyTorch checkpoint, or one we refuse to read."""


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



# -- rebuild functions: the only callables a checkpoint reaches ---------------------------

def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(_typed(storage), storage.dtype, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
    return _tensor_ref(_typed(storage), storage.dtype, storage_offset, size, stride,
                       metadata)


def _typed(storage):
    if not isinstance(storage, _StorageRef):
        raise _Malformed(f"tensor storage must come from a persistent id, "
                         f"got {_show(storage)}")
    return storage


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
    if not isinstance(storage, _StorageRef) or storage.dtype != "uint8":
        raise _Malformed(f"_rebuild_tensor_v3 needs an UntypedStorage, got {_show(storage)}")
    if not (is_placeholder(dtype) and dtype.module == "torch"
            and dtype.name in _TORCH_DTYPES):
        shown = f"{dtype.module}.{dtype.name}" if is_placeholder(dtype) else _show(dtype)
        raise _Malformed(f"unsupported tensor dtype {shown}")
    return _tensor_ref(storage, _TORCH_DTYPES[dtype.name], storage_offset, size, stride,
                       metadata)


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


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _TensorRef):
        raise _Malformed(f"nn.Parameter data must be a tensor, got {_show(data)}")
    return data


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                      _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    # A tensor with Python attributes or of a Tensor subclass: rebuild the plain tensor,
    # drop the subclass and the attributes.
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise _Malformed(f"_rebuild_from_type_v2 of {_show(func)} is not a tensor rebuild")
    return func(*args)


def _ordered_dict(items=()):
    record = _DictRecord()
    if isinstance(items, dict):
        items = list(items.items())
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in items):
        raise _Malformed("OrderedDict must be built from (key, value) pairs")
    for key, value in items:
        record[key] = value
    return record


def _torch_size(sizes=()):
    return _int_tuple(sizes, "torch.Size")


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise _Malformed(f"torch.device({_show(kind)}, {_show(index)}) is not a device")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 has no bytes opcode: Python 3 writes bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Malformed(f"_codecs.encode is only accepted as (str, 'latin1'), "
                         f"got ({type(text).__name__}, {_show(encoding)})")
    return text.encode("latin-1")


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise _Malformed("numpy scalar must be bytes of a plain numeric dtype")
    if len(data) != dtype.dtype.itemsize:
        raise _Malformed(f"numpy {dtype.dtype} scalar needs {dtype.dtype.itemsize} bytes, "
                         f"got {len(data)}")
    return _native(np.frombuffer(data, dtype=dtype.dtype))[0]


# Functions, not the record classes themselves: pickle's NEWOBJ would make a class skip
# its __init__ checks.
def _numpy_dtype(spec, align=False, copy=False):
    return _NumpyDtype(spec)


def _numpy_reconstruct(cls, shape, typecode):
    return _NumpyArray(cls)


def _numpy_frombuffer(buffer, dtype, shape, order):
    return _array_from_bytes(buffer, dtype, shape, order)


def _builtin(kind, accepted):
    def build(*args):
        if not all(isinstance(arg, accepted) for arg in args):
            raise _Malformed(f"{kind.__name__}() of {tuple(type(a).__name__ for a in args)}")
        return kind(*args)
    return build


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): _ordered_dict,
    ("collections", "Counter"): _ordered_dict,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    # Data types Python's pickler spells as calls; their arguments are type-checked.
    ("builtins", "set"): _builtin(set, (list, tuple, set, frozenset)),
    ("builtins", "frozenset"): _builtin(frozenset, (list, tuple, set, frozenset)),
    ("builtins", "bytes"): _builtin(bytes, (bytes, bytearray, str)),  # b"" at protocol 2
    ("builtins", "bytearray"): _builtin(bytearray, (bytes, bytearray, str)),
    ("builtins", "complex"): _builtin(complex, (int, float)),
}
# Protocol 2 pickles name Python 3's builtins __builtin__.
_ALLOWED |= {("__builtin__", name): function
             for (module, name), function in _ALLOWED.items() if module == "builtins"}

# Modules whose globals reach the interpreter, the OS, files, processes or the network:
# a checkpoint naming any of them is refused outright (checked on the top-level package).
_DENIED_MODULES = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "subprocess", "_posixsubprocess",
    "sys", "shutil", "importlib", "runpy", "pickle", "_pickle", "cPickle", "copyreg",
    "copy_reg", "marshal", "socket", "_socket", "ctypes", "_ctypes", "code", "codeop",
    "pty", "operator", "_operator", "functools", "_functools", "types", "signal",
    "_signal", "multiprocessing", "_multiprocessing", "threading", "_thread", "webbrowser",
    "pdb", "bdb", "io", "_io", "asyncio", "tempfile", "inspect", "gc", "site", "zipimport",
    "timeit", "trace", "profile", "cProfile", "http", "urllib", "ftplib", "smtplib",
    "telnetlib", "select", "selectors", "mmap", "fcntl", "resource",
})


# -- the unpickler ------------------------------------------------------------------------

class _Unpickler(pickle.Unpickler):
    """An unpickler that imports nothing: see the module docstring."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data), fix_imports=False)
        self._placeholders = {}

    def find_class(self, module, name):
        module = {"torch.tensor": "torch._tensor"}.get(module, module)  # torch's own renaming
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module.split(".")[0] in _DENIED_MODULES:
            raise _Malformed(f"refusing global {module}.{name}: a checkpoint has no business "
                             f"calling {module.split('.')[0]} (the file may be malicious)")
        if module.split(".")[0] == "torch" and name.endswith("Storage"):
            return _StorageType(f"{module}.{name}", _STORAGE_DTYPES.get(name))
        if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"):
            raise _Malformed(f"unsupported tensor kind {module}.{name} (quantized, sparse, "
                             f"nested or subclass tensors cannot be read)")
        if (module, name) not in self._placeholders:
            self._placeholders[module, name] = _placeholder_class(module, name)
        return self._placeholders[module, name]

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) != 5 or _ascii(pid[0]) != "storage":
            raise _Malformed(f"persistent id {_show(pid)} is not ('storage', type, key, "
                             f"location, numel)")
        _, storage_type, key, location, numel = pid
        key, location = _ascii(key), _ascii(location)
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"storage type {_show(storage_type)} is not a torch storage class")
        if storage_type.dtype is None:
            raise _Malformed(f"unknown storage type {storage_type.qualname}")
        if not isinstance(key, str) or not re.fullmatch(r"\w{1,64}", key):
            raise _Malformed(f"storage key {_show(key)} is not a plain name")
        if type(numel) is not int or not 0 <= numel < 2**63:
            raise _Malformed(f"storage {key} declares {_show(numel)} elements")
        return _StorageRef(key, storage_type.dtype, numel, location)


def _ascii(value):
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


# -- the zip archive ----------------------------------------------------------------------

_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_MAX_INFLATED_BYTES = 1 << 32   # a compressed entry may declare at most this many bytes
_MAX_DEFLATE_RATIO = 1032       # deflate cannot do better; a bigger claim is a lie
_EXPANSION_SLACK = 1 << 26      # bytes tensors may occupy beyond 4x the storages' bytes


class _Archive:
    """The zip, read with our own bounds checks. ``top`` is the archive's one folder.

    Every entry's declared sizes are checked against the file before anything is read:
    a stored entry must fit in the file, a compressed one may not claim more than deflate
    can give, and no two entries may share bytes (overlapping entries are how a small zip
    makes a reader allocate many times its size)."""

    def __init__(self, file, file_size):
        self.file, self.file_size = file, file_size
        try:
            self.zip = zipfile.ZipFile(file)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                struct.error, OverflowError, NotImplementedError) as error:
            raise _Malformed(f"truncated or damaged zip archive ({_one_line(error)})") from None
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _Malformed("zip archive holds the same entry name twice")
        tops = set()
        for name in names:
            top, slash, _ = name.partition("/")
            if not slash:
                raise _Malformed(f"zip entry {name!r:.80} is not inside a top folder")
            tops.add(top)
        if len(tops) > 1:
            shown = ", ".join(repr(top) for top in sorted(tops)[:5])
            raise _Malformed(f"zip archive has several top folders ({shown}); a torch.save "
                             f"checkpoint has one")
        self.top = tops.pop() if tops else ""
        self.entries = {info.filename.partition("/")[2]: info for info in infos}
        for info in infos:
            self._check_declared(info)
        previous_end, previous = 0, None
        for info in sorted(infos, key=lambda info: info.header_offset):
            if info.header_offset < previous_end:
                raise _Malformed(f"zip entries {previous!r:.80} and {info.filename!r:.80} "
                                 f"overlap (a zip bomb?)")
            previous_end, previous = info.header_offset + 30 + info.compress_size, info.filename
        self.storages = {}

    def _check_declared(self, info):
        name = f"entry {info.filename!r:.80}"
        if info.flag_bits & 0x1:
            raise _Malformed(f"{name} is encrypted")
        if info.header_offset + 30 + info.compress_size > self.file_size:
            raise _Malformed(f"{name} declares {info.compress_size} bytes at offset "
                             f"{info.header_offset}, past the end of the {self.file_size}-byte "
                             f"file (truncated?)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise _Malformed(f"stored {name} declares {info.compress_size} bytes stored but "
                             f"{info.file_size} bytes of content")
        if info.compress_type != zipfile.ZIP_STORED and (
                info.file_size > _MAX_INFLATED_BYTES
                or info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024):
            raise _Malformed(f"compressed {name} declares an absurd {info.file_size} bytes "
                             f"from {info.compress_size} compressed bytes")

    def has(self, name):
        return name in self.entries

    def read(self, name, nbytes=None):
        """The first ``nbytes`` bytes of ``<top>/<name>`` (all of it when None)."""
        info = self.entries[name]
        full = f"{self.top}/{name}"
        if nbytes is None:
            nbytes = info.file_size
        if info.file_size < nbytes:
            raise _Malformed(f"entry {full} holds {info.file_size} bytes, fewer than the "
                             f"{nbytes} it should")
        if info.compress_type == zipfile.ZIP_STORED:
            return self._read_stored(info, full, nbytes)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            return self._read_deflated(info, full, nbytes)
        raise _Malformed(f"entry {full} uses zip compression method {info.compress_type}; "
                         f"only stored and deflated entries are read")

    def _read_stored(self, info, full, nbytes):
        self.file.seek(info.header_offset)
        header = self.file.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise _Malformed(f"entry {full} has no local zip header (damaged archive)")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.file_size:
            raise _Malformed(f"entry {full} declares {info.file_size} bytes, past the end of "
                             f"the {self.file_size}-byte file (truncated?)")
        self.file.seek(start)
        data = self.file.read(nbytes)
        if len(data) != nbytes:
            raise _Malformed(f"entry {full} is truncated")
        # torch writes CRC 0 when compute_crc32 is off: nothing to check then.
        if nbytes == info.file_size and info.CRC and zlib.crc32(data) != info.CRC:
            raise _Malformed(f"entry {full} fails its CRC check (damaged file)")
        return data

    def _read_deflated(self, info, full, nbytes):
        try:
            # zipfile inflates no further than the declared size and checks the CRC at its end.
            with self.zip.open(info) as entry:
                data = entry.read(nbytes)
        except (zipfile.BadZipFile, EOFError, zlib.error, ValueError) as error:
            raise _Malformed(f"entry {full} is damaged ({_one_line(error)})") from None
        if len(data) != nbytes:
            raise _Malformed(f"entry {full} is truncated")
        return data

    def storage(self, ref):
        """The bytes of storage ``ref.key``, read once and shared by the tensors viewing it."""
        if ref.key not in self.storages:
            name = f"data/{ref.key}"
            if not self.has(name):
                raise _Malformed(f"storage entry {self.top}/{name} is missing")
            self.storages[ref.key] = self.read(name, ref.nbytes)
        data = self.storages[ref.key]
        if len(data) < ref.nbytes:
            raise _Malformed(f"storage {self.top}/data/{ref.key} holds {len(data)} bytes, "
                             f"fewer than the {ref.nbytes} declared for it")
        return data

    def storage_bytes(self):
        return sum(info.file_size for name, info in self.entries.items()
                   if name.startswith("data/"))


def _one_line(error):
    return " ".join(str(error).split())[:200] or type(error).__name__


# -- turning the read graph into plain Python and NumPy -----------------------------------

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


# -- load ---------------------------------------------------------------------------------

def load(path):
    """The object graph in the PyTorch checkpoint at ``path``, with NumPy arrays for tensors.

    Tensors and nn.Parameters become arrays of their dtype (bfloat16 widened to float32),
    shape and values; dicts and OrderedDicts become dicts in their order (a state_dict's
    ``_metadata`` is dropped); torch.Size becomes a tuple, torch.device a string such as
    "cuda:0"; lists, tuples, str, bytes, numbers, bool and None stay themselves; every
    other class or callable becomes an inert ``Placeholder``. Raises TorchFormatError,
    naming the file, for anything unreadable or unsafe.
    """
    path = os.fspath(path)
    try:
        return _load(path)
    except _Malformed as error:
        raise TorchFormatError(f"{path}: {error}") from None


def _load(path):
    if not os.path.exists(path):
        raise _Malformed("no such file")
    if os.path.isdir(path):
        raise _Malformed("is a directory, not a checkpoint file (torch.distributed.checkpoint "
                         "folders are not supported)")
    if not os.path.isfile(path):
        raise _Malformed("is not a regular file")
    try:
        file = open(path, "rb")
    except OSError as error:
        raise _Malformed(f"cannot be opened ({_one_line(error)})") from None
    with file:
        file_size = os.fstat(file.fileno()).st_size
        head = file.read(512)
        _check_head(head)
        file.seek(0)
        archive = _Archive(file, file_size)
        if archive.has("constants.pkl") or any(name.startswith("code/")
                                                for name in archive.entries):
            raise _Malformed("is a TorchScript archive (torch.jit.save); load it with "
                             "torch.jit.load and torch.save its state_dict()")
        if not archive.has("data.pkl"):
            raise _Malformed(f"zip archive has no {archive.top or '<top>'}/data.pkl, so it is "
                             f"not a torch.save checkpoint")
        byteorder = _byteorder(archive)
        data = archive.read("data.pkl")
        _check_protocol(data)
        graph = _unpickle(data)
        try:
            return _Finalizer(archive, byteorder)(graph)
        except RecursionError:
            raise _Malformed("object graph nests too deeply") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as error:
            # e.g. an array as a dict key, or a set of them
            raise _Malformed(f"object graph cannot be rebuilt ({type(error).__name__}: "
                             f"{_one_line(error)})") from None


def _check_head(head):
    if not head:
        raise _Malformed("is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return
    if head[0] == 0x80 and b"\x8a\x0a" + _LEGACY_MAGIC in head[:32]:
        raise _Malformed("is a legacy PyTorch file (the pre-1.6 format, or saved with "
                         "_use_new_zipfile_serialization=False), which is not supported; "
                         "convert it with a current torch: torch.save(torch.load(f), g)")
    if head[257:262] == b"ustar":
        raise _Malformed("is a tar archive: the legacy PyTorch tar format (before 0.4) is not "
                         "supported; convert it with torch.save(torch.load(f), g)")
    if head[0] == 0x80:
        raise _Malformed("is a bare pickle, not a PyTorch zip checkpoint; bare pickles are not "
                         "read")
    raise _Malformed(f"is not a PyTorch checkpoint (not a zip archive; starts with "
                     f"{head[:8]!r})")


def _byteorder(archive):
    if not archive.has("byteorder"):
        return "little"
    if archive.entries["byteorder"].file_size > 16:
        raise _Malformed("byteorder entry is too long")
    byteorder = archive.read("byteorder")
    if byteorder not in (b"little", b"big"):
        raise _Malformed(f"unknown byteorder {byteorder!r}, expected 'little' or 'big'")
    return byteorder.decode()


def _check_protocol(data):
    if len(data) < 2 or data[0] != 0x80:
        raise _Malformed("data.pkl is not a pickle of protocol 2 to 5 (torch.save writes 2)")
    if not 2 <= data[1] <= 5:
        raise _Malformed(f"data.pkl is pickle protocol {data[1]}, expected 2 to 5")


def _check_opcodes(data):
    """Walk the pickle's opcodes without running any. CPython's unpickler grows its memo
    to whatever slot a PUT names, so a 12-byte pickle could claim gigabytes; an honest
    pickle numbers its slots in order, one opcode or more apart."""
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
                raise _Malformed(f"data.pkl stores memo slot {arg} after only {count} opcodes")
    except _Malformed:
        raise
    except Exception as error:  # genops raises ValueError and friends on bad bytes
        raise _Malformed(f"data.pkl is corrupt or truncated ({type(error).__name__}: "
                         f"{_one_line(error)})") from None


def _unpickle(data):
    _check_opcodes(data)
    try:
        return _Unpickler(data).load()
    except _Malformed:
        raise
    except RecursionError:
        raise _Malformed("data.pkl nests too deeply") from None
    except MemoryError:
        raise _Malformed("data.pkl needs more memory than there is") from None
    except Exception as error:  # the unpickler raises nearly anything on bad bytes
        raise _Malformed(f"data.pkl is corrupt or truncated ({type(error).__name__}: "
                         f"{_one_line(error)})") from None
