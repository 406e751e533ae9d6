"""Load a script of the repository (benchmarks/, tools/) as a module, by its path: they
are not part of the package, so the tests reach their functions this way."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path):
    """The module of ROOT/relative_path (e.g. "benchmarks/bench_kernels.py"), executed."""
    path = os.path.join(ROOT, relative_path)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
