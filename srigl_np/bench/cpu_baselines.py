"""The CPU implementations a row times, and the loaders of the optional ones.

``implementations`` builds, for one layer and input batch, every product a user would
pick instead of ours (NumPy dense, structured, scipy CSR, torch dense and CSR, MKL CSR
through sparse_dot_mkl) and the condensed kernel (ours). torch and MKL are optional:
``baselines`` says which ran or why not, and ``import_sparse_dot_mkl`` finds the MKL
library of pip's mkl wheel without setting paths.
"""

import glob
import importlib.util
import os
import re
import sys
import warnings

import numpy as np

# Intel OpenMP's worker threads spin for KMP_BLOCKTIME ms (default 200) after each MKL
# call: in the interleaved rounds they would spin through the next implementation's turn
# on the cores it needs. 1 ms keeps them awake between MKL's back-to-back calls but not
# into the next turn, as libgomp's default spin does for the condensed kernel. Set
# before MKL loads; a value the user set is kept.
MKL_BLOCKTIME_MS = "1"


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def mkl_rt_candidates():
    """Where pip's ``mkl`` wheel may have put libmkl_rt.so.N: the files the installed
    ``mkl`` distribution lists (its data files land in <environment>/lib), then lib/ of
    this environment and of the user base (``pip install --user``). Newest version first."""
    import site

    paths = []
    try:
        from importlib import metadata

        dist = metadata.distribution("mkl")
        listed = [f for f in dist.files or () if os.path.basename(str(f)).startswith(
            "libmkl_rt.so")]
        paths += sorted((os.path.normpath(str(dist.locate_file(f))) for f in listed),
                        reverse=True)
    except Exception:   # no mkl distribution, or metadata without a file list
        pass
    for lib in (os.path.join(sys.prefix, "lib"), os.path.join(site.USER_BASE or "", "lib")):
        paths += sorted(glob.glob(os.path.join(lib, "libmkl_rt.so*")), reverse=True)
    return list(dict.fromkeys(paths))


def find_mkl_rt(candidates):
    """The first of ``candidates`` that is a file, or None."""
    return next((path for path in candidates if os.path.isfile(path)), None)


def import_sparse_dot_mkl(environ=None, candidates=None):
    """(sparse_dot_mkl, None), or (None, why not) when it is not installed or cannot load
    MKL.

    sparse_dot_mkl finds libmkl_rt through the linker's search path or $MKL_RT; pip's
    mkl wheel puts libmkl_rt.so.N in <environment>/lib, on neither. So, unless the user
    set $MKL_RT, it points $MKL_RT at the wheel's library (``mkl_rt_candidates``) for
    the import, when sparse_dot_mkl loads it, and then removes it again."""
    environ = os.environ if environ is None else environ
    if importlib.util.find_spec("sparse_dot_mkl") is None:
        return None, 'not installed (pip install "srigl_np[bench]")'
    pointed = False
    if "MKL_RT" not in environ:
        path = find_mkl_rt(mkl_rt_candidates() if candidates is None else candidates)
        if path is not None:
            environ["MKL_RT"], pointed = path, True
    environ.setdefault("KMP_BLOCKTIME", MKL_BLOCKTIME_MS)
    try:
        import sparse_dot_mkl
    except (ImportError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"sparse_dot_mkl cannot load MKL: {first}"
    finally:
        if pointed:
            del environ["MKL_RT"]
    return sparse_dot_mkl, None


_MKL = []


def sparse_dot_mkl():
    """``import_sparse_dot_mkl()``, tried once per process."""
    if not _MKL:
        _MKL.append(import_sparse_dot_mkl())
    return _MKL[0]


def mkl_version(mkl):
    """'MKL 2026.2' from MKL's own version string, or 'MKL' when it does not say."""
    try:
        text = mkl.mkl_get_version_string()
    except Exception:   # an old sparse_dot_mkl without it
        return "MKL"
    match = re.search(r"Version\s+(\d[\w.]*)", text or "")
    return f"MKL {match.group(1)}" if match else "MKL"


def baselines():
    """name -> description or why it is missing, for the header: torch and MKL."""
    torch = _torch()
    mkl, why = sparse_dot_mkl()
    return {"torch": (f"torch {torch.__version__}" if torch is not None else
                      'not installed (pip install "torch==2.13.0+cpu")'),
            "mkl": (f"{mkl_version(mkl)} via sparse_dot_mkl "
                    f"{getattr(mkl, '__version__', '?')}" if mkl is not None else why)}


def set_library_threads(threads):
    """Holds torch and MKL to ``threads`` threads for a row (threadpoolctl holds BLAS and
    OpenMP around it)."""
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    mkl, _ = sparse_dot_mkl()
    if mkl is not None:   # loaded after threadpoolctl looked, so set it directly
        mkl.mkl_set_num_threads(threads)


def implementations(weight, layer, batch, threads, rng):
    """name -> (callable, note), or name -> {orientation: callable}, for one layer and
    input batch x (batch, n_in) float32; each callable returns x @ W.T (batch, n_out),
    or the active neurons' (batch, n_active) for structured and condensed."""
    import scipy.sparse

    x = rng.standard_normal((batch, weight.shape[1]), dtype=np.float32)
    x_t = np.ascontiguousarray(x.T)
    w_active = np.ascontiguousarray(weight[layer.active])
    csr = scipy.sparse.csr_array(weight)
    csr_t = scipy.sparse.csr_array(weight.T)
    impls = {
        "dense": (lambda: x @ weight.T, "NumPy BLAS"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T, "x @ Wt_csr": lambda: x @ csr_t},
        "condensed": (lambda: layer.forward(x, threads), condensed_note(layer, batch)),
    }
    torch = _torch()
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        with warnings.catch_warnings():   # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            tw_csr = tw.to_sparse_csr()
        tx_t = torch.from_numpy(x_t)
        impls["torch-dense"] = (lambda: tx @ tw.T, f"torch {torch.__version__}")
        impls["torch-csr"] = (lambda: (tw_csr @ tx_t).T, "(W_csr @ x.T).T")
    mkl, _ = sparse_dot_mkl()
    if mkl is not None:
        product = mkl.dot_product_mkl
        impls["mkl-csr"] = {"(W_csr @ x.T).T": lambda: product(csr, x_t).T,
                            "x @ Wt_csr": lambda: product(x, csr_t)}
    return impls


def condensed_note(layer, batch):
    """'k=307, int16, lookup' : the fan-in, the index dtype and, at batch 1, the batch-1
    kernel the layer runs (``kernels.vector_kernel``: "lookup" or "gather-dot"); larger
    batches run the tiled kernel."""
    from ..kernels import vector_kernel

    note = f"k={layer.k}, {layer.indices.dtype}"
    if batch == 1 and layer.weights is not None:
        note += f", {vector_kernel(layer.weights)}"
    return note
