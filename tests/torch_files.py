"""Writing files in PyTorch's checkpoint layout without torch, for tests.

``write_torch_zip(path, obj)`` writes what ``torch.save(obj, path)`` would, with every
np.ndarray leaf of ``obj`` saved as a tensor: ``<top>/data.pkl`` (a pickle whose tensors
are ``torch._utils._rebuild_tensor_v2`` calls on persistent ids ``('storage',
torch.FloatStorage, key, 'cpu', numel)``), ``<top>/data/<key>`` (the raw storages), and
the bookkeeping entries. Dtypes torch has no legacy storage class for (uint16/32/64) are
written as torch 2.x does: an UntypedStorage of bytes and ``_rebuild_tensor_v3`` with the
dtype.

The pickle is written by ``_PickleWriter``, a small emitter of our own, because Python's
pickler insists on importing every global it names (torch among them). The same emitter
writes files no honest torch would: ``Global`` and ``Call`` name and call any global,
``Tensor`` lays a tensor over a storage with any size, stride and offset,
``pickle_calling`` is a one-call pickle, ``torch_zip_entries`` + ``write_zip`` let a test
replace or drop any entry, and ``set_declared_size`` lies in the central directory.
"""

import collections
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np

# numpy dtype -> torch's legacy storage class (torch.<name>).
_STORAGE_CLASSES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
    "bool": "BoolStorage", "uint8": "ByteStorage", "int8": "CharStorage",
    "int16": "ShortStorage", "int32": "IntStorage", "int64": "LongStorage",
    "complex64": "ComplexFloatStorage", "complex128": "ComplexDoubleStorage",
    "bfloat16": "BFloat16Storage",
}
# Dtypes torch 2.x writes as UntypedStorage + _rebuild_tensor_v3.
_UNTYPED_DTYPES = ("uint16", "uint32", "uint64")

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class Global:
    """A global the pickle names: ``module.name`` (GLOBAL, or STACK_GLOBAL from protocol 4)."""

    module: str
    name: str


@dataclass
class Call:
    """``func(*args)`` (REDUCE), then BUILD with ``state`` unless it is None."""

    func: object
    args: tuple = ()
    state: object = None


@dataclass
class NewObj:
    """``cls.__new__(cls, *args)`` (NEWOBJ), then BUILD with ``state`` unless it is None:
    how Python pickles a plain object such as argparse.Namespace."""

    cls: Global
    args: tuple = ()
    state: object = None


@dataclass
class PersistentId:
    """``fields`` (normally a tuple) saved then BINPERSID: a storage reference as the
    file spells it, for files that spell it wrong."""

    fields: object


@dataclass(eq=False)
class Storage:
    """One storage: ``data`` (1-d) saved as ``torch_dtype`` (its numpy dtype by default;
    "bfloat16" for the uint16 bit patterns of bfloat16 values)."""

    data: np.ndarray
    torch_dtype: str = ""

    def __post_init__(self):
        self.data = np.ascontiguousarray(self.data).reshape(-1)
        self.torch_dtype = self.torch_dtype or self.data.dtype.name
        if self.torch_dtype == "bfloat16" and self.data.dtype != np.uint16:
            raise ValueError(f"bfloat16 storage data must be uint16 bits, got {self.data.dtype}")


@dataclass(eq=False)
class Tensor:
    """A tensor over ``storage`` (a Storage, or a 1-d array saved as one; tensors naming
    the same one share it): ``size`` and ``stride`` in elements, default the whole storage
    as a vector. ``parameter`` wraps it in nn.Parameter as torch does."""

    storage: object
    offset: int = 0
    size: tuple = None
    stride: tuple = None
    parameter: bool = False
    requires_grad: bool = False
    metadata: dict = field(default_factory=dict)


def Parameter(array, requires_grad=True):
    """``array`` saved as an nn.Parameter (what a module's state holds)."""
    tensor = tensor_of(array)
    tensor.parameter, tensor.requires_grad = True, requires_grad
    return tensor


def tensor_of(array):
    """The Tensor torch would write for ``array``: its own storage, C order, or for an
    F-ordered array (a transposed one) the transposed strides over an F-order storage."""
    array = np.asarray(array)
    if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
        flat, stride = array.ravel(order="F"), _contiguous_strides(array.shape[::-1])[::-1]
    else:
        flat, stride = np.ascontiguousarray(array).reshape(-1), _contiguous_strides(array.shape)
    return Tensor(Storage(flat), 0, array.shape, stride)


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


# -- the pickle emitter -------------------------------------------------------------------

class _PickleWriter:
    """Emits pickle opcodes for ``obj``: None, bool, int, float, str, bytes, tuple, list,
    dict, OrderedDict (with BUILD of its __dict__, as a state_dict's _metadata), ndarray,
    Tensor, Storage (bare), Global, Call, NewObj; shared objects through the memo."""

    def __init__(self, protocol, parameters=False):
        if not 2 <= protocol <= 5:
            raise ValueError(f"protocol must be in [2, 5], got {protocol}")
        self.protocol, self.parameters = protocol, parameters
        self.out = bytearray()
        self.memo = {}      # id(obj) -> memo index
        self.alive = []     # keeps memoised objects alive so their ids stay unique
        self.storages = {}  # id(Storage or array) -> (key, Storage)

    def dump(self, obj):
        self.out += pickle.PROTO + bytes([self.protocol])
        self.save(obj)
        self.out += pickle.STOP
        return bytes(self.out)

    def save(self, obj):
        if id(obj) in self.memo:
            return self._get(self.memo[id(obj)])
        if obj is None:
            self.out += pickle.NONE
        elif obj is True or obj is False:
            self.out += pickle.NEWTRUE if obj else pickle.NEWFALSE
        elif isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
            self._int(int(obj))
        elif isinstance(obj, float):
            self.out += pickle.BINFLOAT + struct.pack(">d", obj)
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            self.out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data
            self._put(obj)
        elif isinstance(obj, bytes):
            self._bytes(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, list):
            self.out += pickle.EMPTY_LIST
            self._put(obj)
            for start in range(0, len(obj), 1000):
                self.out += pickle.MARK
                for item in obj[start:start + 1000]:
                    self.save(item)
                self.out += pickle.APPENDS
        elif isinstance(obj, collections.OrderedDict):
            self.save(Global("collections", "OrderedDict"))
            self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
            self._put(obj)
            self._setitems(obj)
            if vars(obj):
                self.save(dict(vars(obj)))
                self.out += pickle.BUILD
        elif isinstance(obj, dict):
            self.out += pickle.EMPTY_DICT
            self._put(obj)
            self._setitems(obj)
        elif isinstance(obj, np.ndarray):
            tensor = tensor_of(obj)
            tensor.parameter = tensor.requires_grad = self.parameters
            self._tensor(tensor)
            self._put(obj)
        elif isinstance(obj, Tensor):
            self._tensor(obj)
            self._put(obj)
        elif isinstance(obj, Storage):
            self._persistent_id(obj)
        elif isinstance(obj, PersistentId):
            self.save(obj.fields)
            self.out += pickle.BINPERSID
        elif isinstance(obj, Global):
            if self.protocol >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.out += pickle.STACK_GLOBAL
            else:
                self.out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
            self._put(obj)
        elif isinstance(obj, Call):
            self.save(obj.func)
            self.save(tuple(obj.args))
            self.out += pickle.REDUCE
            self._put(obj)
            self._build(obj.state)
        elif isinstance(obj, NewObj):
            self.save(obj.cls)
            self.save(tuple(obj.args))
            self.out += pickle.NEWOBJ
            self._put(obj)
            self._build(obj.state)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a torch file")

    def _int(self, value):
        if 0 <= value < 256:
            self.out += pickle.BININT1 + bytes([value])
        elif 0 <= value < 65536:
            self.out += pickle.BININT2 + struct.pack("<H", value)
        elif -2**31 <= value < 2**31:
            self.out += pickle.BININT + struct.pack("<i", value)
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += pickle.LONG1 + bytes([len(data)]) + data

    def _bytes(self, data):
        if self.protocol < 3:  # what Python 3 writes at protocol 2
            return self.save(Call(Global("_codecs", "encode"), (data.decode("latin-1"), "latin1")))
        self.out += pickle.BINBYTES + struct.pack("<I", len(data)) + data
        self._put(data)

    def _tuple(self, items):
        if not items:
            self.out += pickle.EMPTY_TUPLE
            return
        if len(items) <= 3:
            for item in items:
                self.save(item)
            self.out += (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(items) - 1]
        else:
            self.out += pickle.MARK
            for item in items:
                self.save(item)
            self.out += pickle.TUPLE
        self._put(items)

    def _setitems(self, mapping):
        pairs = list(mapping.items())
        for start in range(0, len(pairs), 1000):
            self.out += pickle.MARK
            for key, value in pairs[start:start + 1000]:
                self.save(key)
                self.save(value)
            self.out += pickle.SETITEMS

    def _build(self, state):
        if state is not None:
            self.save(state)
            self.out += pickle.BUILD

    def _put(self, obj):
        index = len(self.memo)
        self.memo[id(obj)] = index
        self.alive.append(obj)
        self.out += (pickle.BINPUT + bytes([index]) if index < 256
                     else pickle.LONG_BINPUT + struct.pack("<I", index))

    def _get(self, index):
        self.out += (pickle.BINGET + bytes([index]) if index < 256
                     else pickle.LONG_BINGET + struct.pack("<I", index))

    def _storage(self, source):
        """(key, Storage) for ``source``, a Storage or a 1-d array: one key per object, so
        tensors naming the same one share the storage."""
        if id(source) not in self.storages:
            storage = source if isinstance(source, Storage) else Storage(source)
            self.storages[id(source)] = (str(len(self.storages)), storage)
            self.alive.append(source)
        return self.storages[id(source)]

    def _persistent_id(self, source):
        """('storage', storage_type, key, 'cpu', numel) BINPERSID, as torch writes it."""
        key, storage = self._storage(source)
        if storage.torch_dtype in _UNTYPED_DTYPES:
            storage_type, numel = Global("torch.storage", "UntypedStorage"), storage.data.nbytes
        else:
            storage_type = Global("torch", _STORAGE_CLASSES[storage.torch_dtype])
            numel = storage.data.size
        self.save(("storage", storage_type, key, "cpu", numel))
        self.out += pickle.BINPERSID

    def _tensor(self, tensor):
        _, storage = self._storage(tensor.storage)
        size = tuple(tensor.size) if tensor.size is not None else (storage.data.size,)
        stride = tuple(tensor.stride) if tensor.stride is not None else _contiguous_strides(size)
        if tensor.parameter:
            self.save(Global("torch._utils", "_rebuild_parameter"))
            self.out += pickle.MARK
        untyped = storage.torch_dtype in _UNTYPED_DTYPES
        rebuild = "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2"
        self.save(Global("torch._utils", rebuild))
        self.out += pickle.MARK
        self._persistent_id(tensor.storage)
        self.save(tensor.offset)
        self.save(size)
        self.save(stride)
        self.save(tensor.requires_grad)
        self.save(Call(Global("collections", "OrderedDict")))
        if untyped:
            self.save(Global("torch", storage.torch_dtype))
        if tensor.metadata:
            self.save(dict(tensor.metadata))
        self.out += pickle.TUPLE + pickle.REDUCE
        if tensor.parameter:
            self.save(tensor.requires_grad)
            self.save(Call(Global("collections", "OrderedDict")))
            self.out += pickle.TUPLE + pickle.REDUCE


def _storage_bytes(storage, byteorder):
    data = storage.data
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    return data.astype(data.dtype.newbyteorder("<" if byteorder == "little" else ">")).tobytes()


# -- files --------------------------------------------------------------------------------

def dump_pickle(obj, protocol=2, parameters=False):
    """``(data.pkl bytes, {key: Storage})`` for ``obj``, as torch would pickle it
    (every ndarray leaf an nn.Parameter if ``parameters``)."""
    writer = _PickleWriter(protocol, parameters)
    data = writer.dump(obj)
    return data, {key: storage for key, storage in writer.storages.values()}


def torch_zip_entries(obj, *, top="archive", protocol=2, byteorder="little",
                      parameters=False):
    """The entries torch.save writes for ``obj``, name -> bytes, in torch's order."""
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")
    data, storages = dump_pickle(obj, protocol, parameters)
    entries = {f"{top}/data.pkl": data, f"{top}/.format_version": b"1",
               f"{top}/.storage_alignment": b"64", f"{top}/byteorder": byteorder.encode()}
    for key, storage in storages.items():
        entries[f"{top}/data/{key}"] = _storage_bytes(storage, byteorder)
    entries[f"{top}/version"] = b"3\n"
    entries[f"{top}/.data/serialization_id"] = b"0" * 40
    return entries


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    """Write ``entries`` (name -> bytes) into a zip at ``path``, in their order."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def write_torch_zip(path, obj, *, top="archive", protocol=2, byteorder="little",
                    parameters=False):
    """Write ``obj`` at ``path`` as torch.save would (see the module docstring); with
    ``parameters`` every ndarray leaf is saved as an nn.Parameter, as in a pickled module.
    Returns ``path``."""
    return write_zip(path, torch_zip_entries(obj, top=top, protocol=protocol,
                                             byteorder=byteorder, parameters=parameters))


def pickle_calling(module, name, *args, protocol=2):
    """A pickle that calls ``module.name(*args)`` when loaded by an unsafe unpickler."""
    return _PickleWriter(protocol).dump(Call(Global(module, name), args))


def legacy_torch_bytes():
    """The start of a legacy (pre-1.6) torch file: the magic number, protocol version and
    system info pickles, then an (empty) object pickle."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(part, protocol=2)
                    for part in (LEGACY_MAGIC, 1001, sys_info, {}, []))


def set_declared_size(path, name, size, *, keep_compressed=False):
    """Rewrite the central directory of the zip at ``path`` so entry ``name`` claims
    ``size`` bytes of content, and as many compressed unless ``keep_compressed`` (its
    data stay as they were)."""
    if keep_compressed:
        _patch_central_entry(path, name, 24, struct.pack("<I", size))
    else:
        _patch_central_entry(path, name, 20, struct.pack("<II", size, size))


def zero_crc(path, name):
    """Set entry ``name``'s CRC to 0 in the central directory, as torch leaves it when its
    compute_crc32 option is off."""
    _patch_central_entry(path, name, 16, struct.pack("<I", 0))


def set_header_offset(path, name, offset):
    """Point entry ``name``'s central directory record at the local header at ``offset``."""
    _patch_central_entry(path, name, 42, struct.pack("<I", offset))


def flip_stored_byte(path, name, index=0):
    """Flip the bits of byte ``index`` of stored entry ``name``'s data, leaving its CRC."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(name).header_offset
    with open(path, "r+b") as file:
        file.seek(offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        file.seek(offset + 30 + name_length + extra_length + index)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))


def _patch_central_entry(path, name, field_offset, value):
    with open(path, "rb") as file:
        data = bytearray(file.read())
    position = data.index(b"PK\x01\x02")
    while data[position + 46:position + 46 + struct.unpack_from("<H", data, position + 28)[0]] \
            != name.encode():
        position = data.index(b"PK\x01\x02", position + 4)
    data[position + field_offset:position + field_offset + len(value)] = value
    with open(path, "wb") as file:
        file.write(data)


def expected_view(storage, offset, size, stride):
    """The values a tensor (offset, size, stride in elements) sees in ``storage`` (1-d),
    by index arithmetic alone: the definition the loader's as_strided must agree with."""
    storage = np.asarray(storage).reshape(-1)
    index = np.full(size, offset, dtype=np.int64)
    for axis, (n, step) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = n
        index = index + (np.arange(n) * step).reshape(shape)
    return storage[index] if math.prod(size) else np.zeros(size, storage.dtype)
