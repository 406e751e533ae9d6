"""The restricted unpickler of PyTorch files: the globals a pickle may reach, and nothing else.

A pickle is a program: each global it names is imported and called. Here nothing the
file names is imported or run. ``_Unpickler.find_class`` maps a short allowlist of
(module, name) pairs (``_ALLOWED``) to the rebuild functions below: tensors,
parameters, ``OrderedDict`` and ``defaultdict`` (plain dicts), ``torch.Size``,
``torch.device``, numpy scalars, arrays and dtypes of plain numeric types, bytes as
protocol 2 spells them, and set, frozenset, bytes, bytearray and complex with
type-checked arguments. Builtin types named as values (``_INERT_BUILTINS``: omegaconf's
metadata holds ``dict`` and ``int``) become inert Placeholders; every other global of a
module that reaches the interpreter, the OS, files or the network (``_DENIED_MODULES``)
is refused by name, and anything else (omegaconf's containers, ``typing.Any``, pathlib
paths: the SRigL authors' checkpoints hold all three) becomes an inert ``Placeholder``. Before any of that,
``_check_opcodes`` walks the opcodes (pickletools.genops, which runs nothing) to refuse
memo slots that would make CPython's unpickler allocate gigabytes, and adds up what each
opcode may build (a stack slot, a container, a string, a placeholder class): a pickle
that would build more than ``MAX_PICKLE_COST`` bytes of objects is refused before it
runs, however it gets there (a few kilobytes of DUP, EMPTY_SET or GLOBAL opcodes build
megabytes). What the rebuild functions return are the records of ``torch_records``.
"""

import io
import pickle
import pickletools
import re

import numpy as np

from .torch_records import (_STORAGE_DTYPES, _TORCH_DTYPES, _DictRecord, _Malformed,
                            _NumpyArray, _NumpyDtype, _StorageRef, _StorageType,
                            _TensorRef, _array_from_bytes, _int_tuple, _native, _one_line,
                            _placeholder_class, _show, _tensor_ref, is_placeholder)


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


def _default_dict(default_factory=None, items=()):
    # defaultdict(factory) then SETITEMS: a plain dict; the factory (a type named by the
    # file, a Placeholder here) is never called.
    if not (default_factory is None or is_placeholder(default_factory)):
        raise _Malformed(f"defaultdict factory must be a named type, "
                         f"got {_show(default_factory)}")
    return _ordered_dict(items)


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
    ("collections", "defaultdict"): _default_dict,
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

# Builtin types a pickle may name as values (omegaconf's metadata records a node's
# ``object_type=dict`` and ``key_type=int``; defaultdict its factory): each becomes an
# inert Placeholder, so naming one imports nothing, and calling one builds only a
# Placeholder. Every other name in builtins is refused below.
_INERT_BUILTINS = frozenset({"dict", "list", "tuple", "int", "long", "float", "str",
                             "unicode", "bool", "object", "NoneType"})

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

# data.pkl may hold at most this many bytes (a state_dict of 20,000 tensors takes ~3 MB)
# and build at most MAX_PICKLE_COST bytes of objects, by _check_opcodes' count.
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_COST = 64 << 20
# What one opcode may build, in bytes (CPython's object sizes, rounded up): the default
# covers a stack slot, a memo entry, a number and its place in a list or dict; a string
# or bytes opcode adds 4 bytes per character of its argument (a str of UCS-4).
_OPCODE_COST = {"EMPTY_SET": 256, "FROZENSET": 256, "EMPTY_DICT": 128, "DICT": 128,
                "EMPTY_LIST": 96, "LIST": 96, "REDUCE": 512, "NEWOBJ": 512,
                "NEWOBJ_EX": 512, "OBJ": 512, "GLOBAL": 2048, "STACK_GLOBAL": 2048,
                "INST": 2048}
_DEFAULT_COST = 64
# A new placeholder class for every distinct global: a type object is ~1 kB.
MAX_PLACEHOLDER_CLASSES = 4096

class _Unpickler(pickle.Unpickler):
    """An unpickler that imports nothing: see the module docstring."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data), fix_imports=False)
        self._placeholders = {}

    def find_class(self, module, name):
        module = {"torch.tensor": "torch._tensor"}.get(module, module)  # torch's own renaming
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module in ("builtins", "__builtin__") and name in _INERT_BUILTINS:
            return self._placeholder(module, name)
        if module.split(".")[0] in _DENIED_MODULES:
            raise _Malformed(f"refusing global {module}.{name}: a checkpoint has no business "
                             f"calling {module.split('.')[0]} (the file may be malicious)")
        if module.split(".")[0] == "torch" and name.endswith("Storage"):
            return _StorageType(f"{module}.{name}", _STORAGE_DTYPES.get(name))
        if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"):
            raise _Malformed(f"unsupported tensor kind {module}.{name} (quantized, sparse, "
                             f"nested or subclass tensors cannot be read)")
        return self._placeholder(module, name)

    def _placeholder(self, module, name):
        if (module, name) not in self._placeholders:
            if len(self._placeholders) >= MAX_PLACEHOLDER_CLASSES:
                raise _Malformed(f"data.pkl names more than {MAX_PLACEHOLDER_CLASSES} "
                                 f"distinct classes or functions")
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


def _check_protocol(data):
    if len(data) < 2 or data[0] != 0x80:
        raise _Malformed("data.pkl is not a pickle of protocol 2 to 5 (torch.save writes 2)")
    if not 2 <= data[1] <= 5:
        raise _Malformed(f"data.pkl is pickle protocol {data[1]}, expected 2 to 5")


def _check_opcodes(data):
    """Walk the pickle's opcodes without running any. CPython's unpickler grows its memo
    to whatever slot a PUT names, so a 12-byte pickle could claim gigabytes; an honest
    pickle numbers its slots in order, one opcode or more apart. And the objects the
    opcodes would build, by ``_OPCODE_COST``, must stay within MAX_PICKLE_COST: the walk
    stops as soon as they would not (so it also bounds the time it takes)."""
    cost = 0
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
                raise _Malformed(f"data.pkl stores memo slot {arg} after only {count} opcodes")
            cost += _OPCODE_COST.get(opcode.name, _DEFAULT_COST)
            if isinstance(arg, (str, bytes, bytearray)):
                cost += 4 * len(arg)
            if cost > MAX_PICKLE_COST:
                raise _Malformed(f"data.pkl would build more than {MAX_PICKLE_COST >> 20} MiB "
                                 f"of objects (by opcode {count}, a {opcode.name}); a "
                                 f"checkpoint's object graph is far smaller")
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
