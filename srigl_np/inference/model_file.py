"""A condensed model's file: a ``.npz`` written atomically, read by ``formats.npz.NpzReader``
(never unpickled, every member checked before it is inflated, and no member read that
the metadata's stages do not name).

format_version 2 (this writer):

    format_version   int64 scalar, 2
    metadata         str scalar, JSON {"format": "srigl_np.condensed", "format_version": 2,
                     "stages": [{"type": <kind>, <settings>, <pipeline>: [stages...]}, ...],
                     optional: "input": {"mean": [...], "std": [...]} (per channel,
                     [0, 1] scale: how images are normalised), "n_classes": <int>}
    <prefix>.<name>  the arrays of a stage: prefix "stage<i>" for the i-th stage of the
                     model, "<parent prefix>.<pipeline><j>" for the j-th stage of a
                     parent's pipeline (e.g. stage4.body1.values, stage4.shortcut0.bias)

Each stage kind's arrays, settings and pipelines are its class's ARRAYS, OPTIONAL,
SETTINGS and PIPELINES (``condensed.Stage``); an optional pipeline that is absent is
saved as null. format_version 1 (files written before residual graphs existed, without
"format_version" in their metadata) still loads: a flat list of stages whose settings
lack those of the class's DEFAULTS, which take their default.
"""

import json

import numpy as np

from ..fileio import atomic_write
from ..formats.npz import NpzError, NpzReader

FORMAT_NAME = "srigl_np.condensed"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The kinds format_version 1 had (flat models: no residual graph, no tokens).
VERSION_1_KINDS = ("linear", "conv2d", "dense_linear", "dense_conv2d", "relu", "max_pool2d",
                   "flatten", "channel_affine", "scatter")
MAX_DEPTH = 8   # pipelines within pipelines: a ViT is 3 deep (model, residual, attention)

# A stage whose arrays declare more than this in all has them checked against each other
# and its settings before any is read (smaller ones are read, and the stage's own checks
# word what is wrong more precisely).
PRECHECK_BYTES = 16 * 2**20


def save(path, stages, metadata):
    """Write ``stages`` (a list of ``condensed.Stage``) and the model-level ``metadata``
    (a dict of JSON values: "input", "n_classes") to ``path`` atomically."""
    arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)}
    entries = [_describe(stage, f"stage{i}", arrays) for i, stage in enumerate(stages)]
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "stages": entries,
                **metadata}
    arrays["metadata"] = np.array(json.dumps(document))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _describe(stage, prefix, arrays):
    """The metadata entry of ``stage``; its arrays (and its sub-stages') go into ``arrays``."""
    stage_arrays, settings = stage.fields()
    arrays.update({f"{prefix}.{name}": a for name, a in stage_arrays.items()})
    entry = {"type": stage.kind, **settings}
    for name in stage.PIPELINES:
        sub = getattr(stage, name)
        entry[name] = None if sub is None else [
            _describe(s, f"{prefix}.{name}{j}", arrays) for j, s in enumerate(sub)]
    return entry


def load(path, stage_types):
    """(stages, metadata) read from ``path``, every stage rebuilt (so validated) by its
    class in ``stage_types`` ({kind: class}). A file that is not such an archive, has
    another format_version, lacks or adds arrays, settings or pipelines, or holds arrays
    of the wrong dtype, shape or range is refused with a ValueError or TypeError saying
    what is wrong; a member the metadata does not name is refused before any is read."""
    try:
        with NpzReader(path) as npz:
            return _load_archive(path, npz, stage_types)
    except NpzError as exc:
        raise ValueError(f"{path!s} is not a readable .npz file: {exc.reason}") from None


def _load_archive(path, npz, stage_types):
    keys = set(npz.members)
    for key in ("format_version", "metadata"):
        if key not in keys:
            raise ValueError(f"{path!s} lacks '{key}': not a condensed model file")
    declared = npz.members["format_version"]
    if declared.shape != () or declared.dtype.kind not in "iu":
        raise ValueError(f"format_version must be one of {READABLE_VERSIONS}, got a "
                         f"{declared.dtype} array of shape {declared.shape}")
    version = int(npz.read("format_version"))
    if version not in READABLE_VERSIONS:
        raise ValueError(f"format_version must be one of {READABLE_VERSIONS}, got {version}")
    metadata = _parse_metadata(path, npz, version)
    plan = [_plan(meta, f"stage{i}", stage_types, version, 0)
            for i, meta in enumerate(metadata["stages"])]
    named = {"format_version", "metadata"}
    for item in plan:
        named |= _members(item)
    if keys - named:   # refused before any of them is read
        raise ValueError(f"unexpected arrays in {path!s}: {sorted(keys - named)}")
    return [_build(item, npz) for item in plan], metadata


def _plan(meta, prefix, stage_types, version, depth):
    """(prefix, meta, stage class, {pipeline: [plans] or None}) of one stage entry, its
    type, settings and pipelines checked, no array read."""
    where = f"stage {prefix.removeprefix('stage')}"
    stage_type = stage_types.get(meta.get("type") if isinstance(meta, dict) else None)
    if stage_type is None or (version == 1 and stage_type.kind not in VERSION_1_KINDS):
        raise ValueError(f"{where} has unknown type {meta!r:.200}; known: "
                         f"{sorted(stage_types)}")
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: pipelines nested more than {MAX_DEPTH} deep")
    settings = set(stage_type.SETTINGS) - (set(stage_type.DEFAULTS) if version == 1 else set())
    unknown = set(meta) - {"type"} - settings - set(stage_type.PIPELINES)
    if unknown:
        raise ValueError(f"{where} ({stage_type.kind}) has unknown settings {sorted(unknown)}")
    for name in sorted(settings):
        if name not in meta:
            raise ValueError(f"{where} ({stage_type.kind}) lacks setting '{name}'")
    pipelines = {}
    for name in stage_type.PIPELINES:
        entries = meta.get(name, "absent")
        if entries is None and name in stage_type.OPTIONAL_PIPELINES:
            pipelines[name] = None
            continue
        if not isinstance(entries, list):
            raise ValueError(f"{where} ({stage_type.kind}) must hold a list of stages "
                             f"'{name}', got {entries!r:.100}")
        pipelines[name] = [_plan(entry, f"{prefix}.{name}{j}", stage_types, version,
                                 depth + 1) for j, entry in enumerate(entries)]
    return prefix, meta, stage_type, pipelines


def _members(item):
    prefix, _, stage_type, pipelines = item
    names = {f"{prefix}.{name}" for name in stage_type.ARRAYS + stage_type.OPTIONAL}
    for sub in pipelines.values():
        for sub_item in sub or ():
            names |= _members(sub_item)
    return names


def _build(item, npz):
    """The stage of a plan, rebuilt from its metadata entry and the archive's arrays."""
    prefix, meta, stage_type, pipelines = item
    where = f"stage {prefix.removeprefix('stage')} ({stage_type.kind})"
    _check_declared(where, prefix, meta, stage_type, npz.members)
    fields = {}
    for name in stage_type.ARRAYS + stage_type.OPTIONAL:
        key = f"{prefix}.{name}"
        if key in npz.members:
            fields[name] = npz.read(key)
        elif name in stage_type.ARRAYS:
            raise ValueError(f"{where} lacks array '{key}'")
    for name in stage_type.SETTINGS:
        fields[name] = meta[name] if name in meta else stage_type.DEFAULTS[name]
    for name, sub in pipelines.items():
        fields[name] = None if sub is None else [_build(sub_item, npz) for sub_item in sub]
    try:
        return stage_type.from_fields(**fields)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _check_declared(where, prefix, meta, stage_type, members):
    """A big condensed layer's arrays as their headers declare them, before any is read:
    values (n_active, k) with n_active <= n_out and k <= n_in, indices of values' shape,
    active and bias (n_active,). A file whose arrays do not fit its own settings is
    refused without inflating them."""
    declared = {name: members[f"{prefix}.{name}"]
                for name in stage_type.ARRAYS + stage_type.OPTIONAL
                if f"{prefix}.{name}" in members}
    total = sum(int(np.prod(m.shape, dtype=np.float64)) * m.dtype.itemsize
                for m in declared.values())
    if total <= PRECHECK_BYTES or "values" not in declared:
        return
    n_out, n_in = meta.get("n_out"), meta.get("n_in")
    values = declared["values"].shape
    fits = (all(isinstance(v, int) and not isinstance(v, bool) for v in (n_out, n_in))
            and len(values) == 2 and values[0] <= n_out and values[1] <= n_in
            and declared.get("indices", declared["values"]).shape == values
            and all(declared[name].shape == values[:1]
                    for name in ("active", "bias") if name in declared))
    if not fits:
        shapes = ", ".join(f"{name} {m.shape}" for name, m in declared.items())
        raise ValueError(f"{where}: its arrays ({shapes}) do not fit its settings "
                         f"n_out={n_out!r}, n_in={n_in!r}: values (n_active, k) with "
                         f"n_active <= n_out and k <= n_in, indices as values, active and "
                         f"bias (n_active,)")


def _parse_metadata(path, npz, version):
    """The metadata document, its format, version and stage list checked. The "input"
    and "n_classes" entries are returned as they are: the model's constructor checks
    them."""
    metadata = npz.read_json("metadata", f"{path!s}: metadata")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"metadata must name format {FORMAT_NAME!r}")
    stated = metadata.get("format_version", 1)
    if stated != version or isinstance(stated, bool):
        raise ValueError(f"metadata states format_version {stated!r}, the archive {version}")
    if not isinstance(metadata.get("stages"), list):
        raise ValueError("metadata must hold a list of stages")
    return metadata
