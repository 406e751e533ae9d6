"""The training checkpoint format.

A checkpoint is one ``.npz`` (no pickles) holding

    meta                     JSON string: format version, epoch, step, config, history
    param/<name>             every model parameter ("0.weight", ...)
    buffer/<name>            every model buffer (BatchNorm running statistics)
    optim/<name>/<key>       the optimizer's per-parameter state ("momentum_buffer", ...)
    dst/<key>/<name>         DynamicSparsity masks, ever-active masks, ablated neurons

It is written with ``fileio.atomic_write``, so a crash never leaves a half-written
checkpoint.
Arrays are saved from whichever device they live on (as NumPy) and loaded into the
existing arrays on theirs, so a GPU run's checkpoint resumes on the GPU or the CPU.
"""

import json

import numpy as np

from .backend import on_device_of, to_numpy
from .fileio import atomic_write

CHECKPOINT_VERSION = 1


def save_checkpoint(path, meta, model, optimizer, sparsity=None):
    arrays = {"meta": np.array(json.dumps({"version": CHECKPOINT_VERSION, **meta}))}
    arrays.update({f"param/{k}": to_numpy(v) for k, v in model.named_parameters().items()})
    arrays.update({f"buffer/{k}": to_numpy(v) for k, v in model.named_buffers().items()})
    for name, state in optimizer.state.items():
        arrays.update({f"optim/{name}/{key}": to_numpy(value) for key, value in state.items()})
    if sparsity is not None:
        arrays.update({f"dst/{k}": to_numpy(v) for k, v in sparsity.state_dict().items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path, model, optimizer, sparsity=None):
    """Restore model, optimizer and DynamicSparsity state in place; return the meta dict."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if "meta" not in arrays:
        raise ValueError(f"{path} is not a srigl_np checkpoint (no 'meta')")
    meta = json.loads(str(arrays["meta"]))
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')!r} is not "
                         f"{CHECKPOINT_VERSION}")

    def section(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    model.load_state_dict({**section("param/"), **section("buffer/")})
    optim_state = section("optim/")
    for name, state in optimizer.state.items():
        for key, buffer in state.items():
            saved = optim_state.get(f"{name}/{key}")
            if saved is None or saved.shape != buffer.shape:
                raise ValueError(f"{path}: optimizer state {name}/{key} missing or misshapen")
            buffer[...] = on_device_of(saved, buffer)
    optimizer.step_count = int(meta["optimizer_step_count"])
    if sparsity is not None:
        sparsity.load_state_dict(section("dst/"))
    return meta
