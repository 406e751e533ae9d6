"""Build srigl_np's compiled modules: ``srigl_np/_kernels.pyx`` (the inference kernels, its
C in ``_kernels.h``) and ``srigl_np/_training_kernels.pyx`` (the condensed training
products, its C in ``_training_kernels.h``), with the same flags.

OpenMP is probed, not assumed: a tiny program is compiled *and run* with
``-fopenmp``; only on success are the flags added. Otherwise the extension builds
single-threaded and the build says so once.

Environment switches:
    SRIGL_NP_NO_OPENMP=1       build without OpenMP even where it works.
    SRIGL_NP_REQUIRE_OPENMP=1  a failed OpenMP probe is an error (CI sets it).
    SRIGL_NP_NATIVE=1          add ``-march=native`` (the build then runs only on CPUs
                               like this one). Not needed for speed: the condensed
                               kernels carry AVX-512, AVX2 and generic variants and
                               pick one at import, so the default build is portable.
"""

import os
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n);
    return n > 0 ? 0 : 1;
}
"""


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _compiles_and_runs(source, flags):
    """True when ``source`` compiles with ``flags`` and the program exits 0."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(source)
        try:
            subprocess.run(_compiler() + [src, "-o", exe] + flags, check=True,
                           capture_output=True, timeout=120)
            subprocess.run([exe], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or empty lists without it."""
    if _env_flag("SRIGL_NP_NO_OPENMP"):
        print("srigl_np: OpenMP disabled by SRIGL_NP_NO_OPENMP; kernels run single-threaded.")
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if _compiles_and_runs(OPENMP_PROBE, ["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    message = ("srigl_np: the compiler cannot build and run an OpenMP program; "
               "kernels will run single-threaded.")
    if _env_flag("SRIGL_NP_REQUIRE_OPENMP"):
        raise SystemExit(message + " (SRIGL_NP_REQUIRE_OPENMP is set, so this is fatal)")
    print(message)
    return [], []


def optimisation_flags():
    if sys.platform == "win32":
        return ["/O2"]
    flags = ["-O3"]
    if _env_flag("SRIGL_NP_NATIVE") and _compiles_and_runs(
            "int main(void){return 0;}", ["-march=native"]):
        flags.append("-march=native")
    return flags


omp_compile, omp_link = openmp_flags()
compile_args = optimisation_flags() + omp_compile
extension = Extension(
    "srigl_np._kernels",
    sources=["srigl_np/_kernels.pyx"],
    # srigl_np/_kernels.h and _kernels_isa.h hold the kernels' C (``cdef extern from
    # "_kernels.h"``); ``depends`` rebuilds the extension when only a header changed.
    include_dirs=["srigl_np", numpy.get_include()],
    depends=["srigl_np/_kernels.h", "srigl_np/_kernels_isa.h"],
    extra_compile_args=compile_args,
    extra_link_args=omp_link,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)
training_extension = Extension(
    "srigl_np._training_kernels",
    sources=["srigl_np/_training_kernels.pyx"],
    include_dirs=["srigl_np", numpy.get_include()],
    depends=["srigl_np/_training_kernels.h"],
    extra_compile_args=compile_args,
    extra_link_args=omp_link,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension, training_extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
