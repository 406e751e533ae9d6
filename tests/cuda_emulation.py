"""Run srigl_np's CUDA kernel source as C++ on the CPU, launch by launch.

No GPU here, so the kernels' own code is checked by compiling the .cu file with g++
after ``cuda_emulation.h`` (the CUDA qualifiers compile away, blockIdx/threadIdx/
blockDim/gridDim are globals, a launch runs every (block, thread) in turn) and loading
it with ctypes. ``EmulatedModule`` has the part of CuPy's ``RawModule`` that
``srigl_np.cuda_training`` uses (``RawModule(code=, options=, name_expressions=)``,
``get_function(name_expression)``, a kernel called as ``kernel(grid, block, args)``),
so a test can hand it to the fake CuPy and run the real launch functions too.

Each launch is checked against CUDA's limits (at most 1024 threads a block, gridDim.y
and .z at most 65535, no empty grid) and recorded in ``EmulatedModule.launches``.
Arguments are passed as CUDA passes them (an array of pointers to each parameter):
NumPy arrays by their data pointer, NumPy scalars (np.int32, np.int64, np.float32,
np.float64) by value; anything else is refused, as a RawKernel refuses it.

What this does not check: the timing, memory coalescing, and any behaviour of a real
GPU's compiler (nvcc's own compile is tests/test_cuda_training_source.py's other
test); sequential execution cannot show a race, which is why the kernels have none by
design (each output written by one thread, no shared memory or atomics). A read or
write far outside an array crashes the test process (a GPU would report an illegal
address); the tests' NaN guards catch the near misses an off-by-one makes.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulation.h")
NO_COMPILER = "needs g++ to run the CUDA kernel source as C++"
_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
            np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
_libraries = {}   # (code, name_expressions) hash -> loaded library, once per process
_build_dir = None


def compiler_available():
    return shutil.which("g++") is not None


def _compile(code, name_expressions):
    """The ctypes library of ``code`` with one extern "C" entry point per name expression."""
    global _build_dir
    key = hashlib.sha256("\0".join((code,) + tuple(name_expressions)).encode()).hexdigest()
    if key in _libraries:
        return _libraries[key]
    if _build_dir is None:
        _build_dir = tempfile.mkdtemp(prefix="srigl_cuda_emulation_")
    source = os.path.join(_build_dir, f"{key[:16]}.cpp")
    entries = "\n".join(
        f'extern "C" void launch_{i}(const unsigned* grid, const unsigned* block, '
        f'void** args) {{ emulation::run(&{name}, grid, block, args); }}'
        for i, name in enumerate(name_expressions))
    with open(source, "w") as f:
        f.write(f'#include "{HEADER}"\n{code}\n{entries}\n')
    library = source[:-4] + ".so"
    result = subprocess.run(["g++", "-std=c++14", "-O1", "-Wall", "-Werror", "-shared", "-fPIC",
                             source, "-o", library], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ could not compile the kernel source:\n{result.stderr}")
    _libraries[key] = ctypes.CDLL(library)
    return _libraries[key]


def _dims(name, dims):
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{name} must be 1 to 3 positive sizes, got {dims}")
    return (ctypes.c_uint * 3)(*dims)


class EmulatedKernel:
    def __init__(self, module, name, entry):
        self.module, self.name, self._entry = module, name, entry

    def __call__(self, grid, block, args):
        grid, block = _dims("grid", grid), _dims("block", block)
        if block[0] * block[1] * block[2] > 1024:
            raise ValueError(f"{self.name}: a block holds at most 1024 threads, got {tuple(block)}")
        if grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"{self.name}: gridDim.y and .z are at most 65535, got {tuple(grid)}")
        storage = []
        for a in args:
            if isinstance(a, np.ndarray):
                storage.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.generic) and a.dtype in _SCALARS:
                storage.append(_SCALARS[a.dtype](a.item()))
            else:
                raise TypeError(f"{self.name}: cannot pass {type(a).__name__} to a kernel")
        pointers = (ctypes.c_void_p * max(1, len(storage)))(
            *(ctypes.cast(ctypes.pointer(s), ctypes.c_void_p) for s in storage))
        self.module.launches.append((self.name, tuple(grid), tuple(block)))
        self._entry(grid, block, pointers)


class EmulatedModule:
    """``cupy.RawModule`` for the CPU: ``code`` compiled as C++ with the emulation header;
    ``options`` (nvrtc's) are not g++'s and are ignored."""

    def __init__(self, code, options=(), name_expressions=()):
        self.name_expressions = tuple(name_expressions)
        self._library = _compile(code, self.name_expressions)
        self.launches = []

    def get_function(self, name_expression):
        index = self.name_expressions.index(name_expression)
        entry = getattr(self._library, f"launch_{index}")
        entry.restype = None
        return EmulatedKernel(self, name_expression, entry)
