"""The training checkpoint format.

A checkpoint is one ``.npz`` (no pickles; read by ``npz.read_npz``) holding

    meta                     JSON string: format version, epoch, step, config, history,
                             the data used ("data": its name, source, train/test counts,
                             input mean/std and "sha256", a fingerprint of the raw
                             images and labels, see ``check_data``), the
                             layer sparsities ("layer_sparsity") and the layers the
                             distribution keeps dense with the reason ("kept_dense")
    param/<name>             every model parameter ("0.weight", ...)
    buffer/<name>            every model buffer (BatchNorm running statistics)
    optim/<name>/<key>       the optimizer's per-parameter state ("momentum_buffer", ...)
    dst/<key>/<name>         DynamicSparsity masks, ever-active masks, ablated neurons

It is written with ``fileio.atomic_write``, so a crash never leaves a half-written
checkpoint. It is read through ``npz.NpzReader``, and what each member declares (its
name, dtype and shape) is checked against the model being restored before any member
is read: a stray member, or one of another shape, is refused without being inflated,
and the meta is read with ``fileio.parse_json``'s bounds.
Arrays are saved from whichever device they live on (as NumPy) and loaded into the
existing arrays on theirs, so a GPU run's checkpoint resumes on the GPU or the CPU.
"""

import contextlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..backend import on_device_of, to_numpy
from ..fileio import MAX_JSON_CHARS, atomic_write, file_kind, parse_json
from .npz import NpzError, NpzReader

CHECKPOINT_VERSION = 1
# Every member but "meta" lies in one of these sections.
SECTIONS = ("param/", "buffer/", "optim/", "dst/")
# DynamicSparsity's state per weight: dst/<kind>/<parameter name>.
DST_KINDS = ("mask", "ever_active", "ablated", "dense_grad")


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
    """Restore model, optimizer and DynamicSparsity state in place; return the meta dict.

    Everything is checked before anything is written, so a bad checkpoint raises one
    ValueError naming the file and what is wrong, and leaves the objects as they were.
    What the members declare is checked before any is read (without ``sparsity`` the
    dst/ section is neither checked nor read).
    """
    with _opened(path) as npz:
        meta = _read_meta(path, npz)
        # (what, section prefix, {key: the array it is copied into})
        sections = [("parameter", "param/", model.named_parameters()),
                    ("buffer", "buffer/", model.named_buffers()),
                    ("optimizer state", "optim/",
                     {f"{name}/{key}": buffer for name, state in optimizer.state.items()
                      for key, buffer in state.items()})]
        for what, prefix, targets in sections:
            _check_section(path, what, _section(npz.members, prefix), targets)
        if sparsity is not None:
            _check_sparsity_state(path, _section(npz.members, "dst/"), sparsity)
        arrays = {key: npz.read(key) for key in npz.members
                  if key != "meta" and (sparsity is not None or not key.startswith("dst/"))}
    for what, prefix, _ in sections:
        for key, value in _section(arrays, prefix).items():
            check_finite(path, what, key, value)
    if sparsity is not None:
        _check_ablated_indices(path, _section(arrays, "dst/ablated/"), sparsity)
        check_masks_cover_weights(path, _section(arrays, "param/"),
                                   _section(arrays, "dst/mask/"))

    for _, prefix, targets in sections:
        saved = _section(arrays, prefix)
        for key, target in targets.items():
            target[...] = on_device_of(saved[key], target)
    optimizer.step_count = meta["optimizer_step_count"]
    if sparsity is not None:
        sparsity.load_state_dict(_section(arrays, "dst/"))
    return meta


def read_meta(path):
    """The meta dict of the checkpoint at ``path``, checked as ``load_checkpoint`` checks
    it (one ValueError naming the file), without reading any other member."""
    with _opened(path) as npz:
        return _read_meta(path, npz)


def _section(members, prefix):
    return {k[len(prefix):]: v for k, v in members.items() if k.startswith(prefix)}


def _describe_data(data):
    return (f"{data.get('name')} from {data.get('source')} ({data.get('n_train')} train / "
            f"{data.get('n_test')} test images, sha256 {str(data.get('sha256'))[:12]})")


def check_data(path, saved, current):
    """Refuse to continue the checkpoint at ``path`` (trained on ``saved``, its meta's
    "data") on other data (``current``): one ValueError naming both. Returns a note
    (a line to print) when the checkpoint predates the fingerprint, else None."""
    if not isinstance(saved, dict) or "sha256" not in saved:
        return (f"note: {path} does not record a fingerprint of its data (an older "
                f"checkpoint); resuming without checking that the data is the same")
    keys = ("n_train", "n_test", "sha256")
    if any(saved.get(k) != current.get(k) for k in keys):
        raise ValueError(f"{path} was trained on {_describe_data(saved)}, but this run "
                         f"loads {_describe_data(current)}: resume it on the data it was "
                         f"trained on (--data-path), or start a new run")
    return None


@contextlib.contextmanager
def _opened(path):
    """The checkpoint at ``path`` as an NpzReader; every NpzError, opening it or reading
    a member, becomes one ValueError "cannot read checkpoint <path>: <why>"."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        why = file_kind(path) or "missing"
        raise ValueError(f"checkpoint {path} is not a file ({why})")
    try:
        with NpzReader(path) as npz:
            yield npz
    except NpzError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc.reason}") from None


def _read_meta(path, npz):
    """The checked meta dict; first, that every member is one a checkpoint holds."""
    if "meta" not in npz.members:
        raise ValueError(f"{path} is not a srigl_np checkpoint (no 'meta')")
    stray = [key for key in npz.members if key != "meta" and not key.startswith(SECTIONS)]
    if stray:
        raise ValueError(f"{path}: member {stray[0]!r} is not part of a srigl_np checkpoint "
                         f"(its members are meta and {', '.join(SECTIONS)}...)"
                         + (f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""))
    meta = npz.read_json("meta", f"{path}: 'meta'")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')!r} is not "
                         f"{CHECKPOINT_VERSION}")
    for key in ("optimizer_step_count", "epoch", "step"):
        count = meta.get(key)
        if key not in meta and key != "optimizer_step_count":
            continue   # checkpoints written by hand (tests, tools) may leave them out
        if not _is_count(count):
            what = "is missing" if key not in meta else f"is {count!r}"
            raise ValueError(f"{path}: meta {key!r} {what}; expected an integer >= 0")
    _check_meta_records(path, meta)
    return meta


def _is_count(value):
    """An integer in [0, 2**63): what a count of steps, epochs or images can be."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and np.isfinite(value))


def _check_meta_records(path, meta):
    """The meta's records, where present, of the kinds the trainer writes: "history" a
    list, "layer_sparsity" {name: sparsity in [0, 1)}, "kept_dense" {name: reason, one
    printable line}, "data" an object whose counts are integers in [0, 2**63) and whose
    input statistics are finite numbers (the std > 0). One ValueError naming the file
    and the key."""
    def fail(key, expected):
        raise ValueError(f"{path}: meta {key!r} must be {expected}, got "
                         f"{_short(meta[key])}")

    if "history" in meta and not isinstance(meta["history"], list):
        fail("history", "a list of epoch records")
    sparsities = meta.get("layer_sparsity", {})
    if not isinstance(sparsities, dict) or not all(
            _is_number(v) and 0 <= v < 1 for v in sparsities.values()):
        fail("layer_sparsity", "an object of layer names to sparsities in [0, 1)")
    reasons = meta.get("kept_dense", {})
    if not isinstance(reasons, dict) or not all(
            isinstance(v, str) and v.isprintable() and len(v) <= 200
            for v in reasons.values()):
        fail("kept_dense", "an object of layer names to reasons (one printable line each)")
    data = meta.get("data", {})
    if data is None:
        return
    if not (isinstance(data, dict)
            and all(_is_count(data[k]) for k in ("n_train", "n_test") if k in data)
            and all(_is_number(data[k]) for k in ("mean", "std") if k in data)
            and data.get("std", 1) > 0):
        fail("data", "an object with counts n_train, n_test (integers in [0, 2**63)) and "
                     "input statistics mean, std (finite numbers, std > 0)")


def _short(value, limit=80):
    """``repr(value)``, cut to ``limit`` characters: a message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_state_of(path, members, params):
    """Optimizer and sparsity members (not read for inference) must belong to one of the
    model's parameters: optim/<parameter>/<key>, dst/<DST_KINDS>/<parameter>."""
    for key in members:
        section, _, rest = key.partition("/")
        if section == "optim":
            name = rest.rpartition("/")[0]
        elif section == "dst":
            kind, _, name = rest.partition("/")
            name = name if kind in DST_KINDS else None
        else:
            continue
        if name not in params:
            raise ValueError(f"{path}: member {key!r} belongs to none of the parameters of "
                             f"the model its config builds")


def _describe(array):
    return f"{array.dtype} {tuple(array.shape)}"


def _check_section(path, what, saved, targets):
    """``saved`` (the members' declared shapes and dtypes) must hold exactly ``targets``'
    keys, each with the target's dtype and shape."""
    missing = sorted(set(targets) - set(saved))
    if missing:
        raise ValueError(f"{path}: {what} {missing[0]!r} is missing"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(saved) - set(targets))
    if unexpected:
        raise ValueError(f"{path}: {what} {unexpected[0]!r} is not in the model/optimizer "
                         f"being restored" + (f" (and {len(unexpected) - 1} more)"
                                              if len(unexpected) > 1 else ""))
    for key, target in targets.items():
        value = saved[key]
        if value.shape != target.shape or value.dtype != target.dtype:
            raise ValueError(f"{path}: {what} {key!r} must be {_describe(target)}, "
                             f"got {_describe(value)}")


def check_finite(path, what, key, value):
    """A float array of a checkpoint holds no NaN or Inf: the trainer stops before a
    non-finite loss reaches the weights, so such a value means a damaged file (or one
    saved from a run that diverged in its last step), and training or inference on it
    would only spread it."""
    if value.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(value)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: {what} {key!r} holds non-finite values ({int(bad.sum())} "
                         f"NaN or Inf, first at {first}): the checkpoint is damaged, or its "
                         f"run had diverged when it was saved; use an earlier one or start "
                         f"a new run")


def check_masks_cover_weights(path, params, masks):
    """Every saved weight is 0 outside its saved mask, as training leaves it: a checkpoint
    where they disagree was not written by this trainer (or was damaged). params, masks:
    {name: array}; one ValueError naming the file and parameter otherwise. The check of
    ``load_checkpoint`` and of ``python -m srigl_np.explain --checkpoint``."""
    for name, mask in masks.items():
        outside = (params[name] != 0) & ~mask
        if outside.any():
            first = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(f"{path}: parameter {name!r} has {int(outside.sum())} non-zero "
                             f"weights outside its mask (first at {first}): the masks "
                             f"disagree with the weights")


def _check_sparsity_state(path, saved, sparsity):
    """Masks as DynamicSparsity.state_dict() has them (bool, the weight's shape); ablated
    neurons a 1-D integer array, no longer than the weight has rows. ``saved`` holds
    arrays or what members declare (``npz.Member``)."""
    expected = sparsity.state_dict()
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: sparsity state {unexpected[0]!r} is not in the "
                         f"DynamicSparsity being restored")
    masks = {k: v for k, v in expected.items() if not k.startswith("ablated/")}
    _check_section(path, "sparsity state", {k: v for k, v in saved.items()
                                            if not k.startswith("ablated/")}, masks)
    for key in (k for k in expected if k.startswith("ablated/")):
        if key not in saved:
            raise ValueError(f"{path}: sparsity state {key!r} is missing")
        value, n_out = saved[key], sparsity.masks[key[len("ablated/"):]].shape[0]
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise ValueError(f"{path}: sparsity state {key!r} must be a 1-D integer array, "
                             f"got {_describe(value)}")
        if value.shape[0] > n_out:
            raise ValueError(f"{path}: sparsity state {key!r} lists {value.shape[0]} "
                             f"neurons, more than the {n_out} its layer has")


def _check_ablated_indices(path, ablated, sparsity):
    """Ablated neurons (arrays, read) are row indices of their weight."""
    for name, value in ablated.items():
        n_out = sparsity.masks[name].shape[0]
        if value.size and (int(value.min()) < 0 or int(value.max()) >= n_out):
            raise ValueError(f"{path}: sparsity state 'ablated/{name}' must hold neuron "
                             f"indices in [0, {n_out}), got values in [{int(value.min())}, "
                             f"{int(value.max())}]")


# -- loading for inference -----------------------------------------------------------

@dataclass
class TrainedModel:
    """A trained run, ready for inference: what ``load_model`` returns.

    model: the srigl_np.nn.layers.Sequential (weights and buffers restored); masks:
    {parameter name: bool mask} (a dense run: all True for every Linear/Conv2d weight);
    config: the training config;
    input_stats: (mean, std) of the training images on the [0, 1] scale, or None when
    the checkpoint does not record them; meta: the checkpoint's meta (epoch, step, ...).
    """
    model: object
    masks: dict
    config: dict
    input_stats: tuple = None
    meta: dict = field(default_factory=dict)


def load_model(path):
    """The trained model of a run directory or checkpoint file, without an optimizer.

    path: a directory written by ``python -m srigl_np.train`` (its checkpoint.npz) or a
    checkpoint .npz. The model is rebuilt from the saved config (``models.build``), its
    parameters and buffers are checked (names, dtypes, shapes) and copied in, and the
    DynamicSparsity masks come along, so ``condensing.condense_run(load_model(run))``
    condenses by the masks. Every problem is one ValueError naming the file.
    """
    from ..nn.models import MODEL_NAMES, build

    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    with _opened(path) as npz:
        meta = _read_meta(path, npz)
        config = meta.get("config")
        named = config.get("model") if isinstance(config, dict) else None
        if named not in MODEL_NAMES:
            raise ValueError(f"{path}: meta 'config' must name a model in {MODEL_NAMES}, "
                             f"got {named!r}")
        model = build(config["model"], rng=np.random.default_rng(0))
        params = model.named_parameters()
        # What the members declare first; then only what inference needs is read.
        targets = {"param/": ("parameter", params), "buffer/": ("buffer", model.named_buffers())}
        for prefix, (what, section) in targets.items():
            _check_section(path, what, _section(npz.members, prefix), section)
        for name, mask in _section(npz.members, "dst/mask/").items():
            if name not in params or mask.dtype != bool or mask.shape != params[name].shape:
                raise ValueError(f"{path}: 'dst/mask/{name}' must be a bool mask of a "
                                 f"parameter's shape, got {_describe(mask)}")
        _check_state_of(path, npz.members, params)
        arrays = {key: npz.read(key) for key in npz.members
                  if key.startswith(("param/", "buffer/", "dst/mask/"))}
    for prefix, (_, section) in targets.items():
        for key, target in section.items():
            target[...] = arrays[prefix + key]
    masks = _section(arrays, "dst/mask/")
    if config.get("method", "dense") == "dense" and not masks:
        # A dense run's structure is every weight, also one that is exactly 0.
        masks = {name: np.ones(p.shape, dtype=bool) for name, p in params.items()
                 if name.endswith(".weight") and p.ndim >= 2}
    return TrainedModel(model, masks, config, _input_stats(path, meta), meta)


def _input_stats(path, meta):
    """(mean, std) from the checkpoint's meta, or from the metrics.json beside it (runs
    written before the checkpoint recorded its data); None when neither has them."""
    data = meta.get("data")
    metrics = (os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
               if isinstance(path, (str, os.PathLike)) else None)
    # Not a FIFO: opening one would block until something writes to it.
    if not isinstance(data, dict) and metrics and file_kind(metrics) == "a regular file":
        try:
            with open(metrics, "rb") as f:
                data = parse_json(f.read(MAX_JSON_CHARS + 1), metrics).get("data")
        except (OSError, ValueError, AttributeError):
            data = None
    if isinstance(data, dict) and {"mean", "std"} <= set(data):
        mean, std = data["mean"], data["std"]
        if not (_is_number(mean) and _is_number(std) and std > 0):   # metrics.json's
            raise ValueError(f"{path}: the input statistics of its run must be finite "
                             f"numbers, std > 0, got mean {_short(mean, 30)}, std "
                             f"{_short(std, 30)}")
        return mean, std
    return None
