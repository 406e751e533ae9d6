"""PyTorch checkpoints into srigl_np: the SRigL authors' training checkpoints, other
training checkpoints, bare state_dicts, masks saved beside them and ``torch.nn.utils.prune``
pairs, read without torch (``torch_format``).

    read_torch_checkpoint(path) -> ImportedCheckpoint        what the file holds, validated
    model_map.to_model(imported) -> (Sequential or None, masks, notes)

The authors' training loop (``train_rigl.py``) saves ``Checkpoint.get_state()``
(``rigl_torch/utils/checkpoint.py``): a dict holding the ``state_dict()`` of model,
optimizer, scheduler, scaler and pruner, and the plain attributes run_id, cfg (an
omegaconf DictConfig: a Placeholder here), epoch, step, best_acc, current_acc, is_best,
checkpoint_dir (a pathlib.Path: a Placeholder, summarised as its path), f_name,
best_file_name, parent_dir. The
model state carries "module." prefixes when the run used DistributedDataParallel.

The pruner entry is ``RigLScheduler.state_dict()``: the scheduler's ``__dict__`` minus
model, _logger, optimizer, backward_hook_objects, meters, use_sparse_init and W. Its
``backward_masks`` is a list with one bool tensor per weighted layer, or None where the
layer is dense (its sparsity ``S[i] <= 0``, e.g. MnistNet's conv1 and fc2 under ERK at
90% sparsity), in the order the authors' ``get_W`` walks the model: every Linear and
every module with a ``weight`` but BatchNorm2d, LayerNorm and SyncBatchNorm, children
in registration order, which is also the state_dict's order. ``module_names`` holds the
*leaf* names of those modules ("conv1", never "module.conv1" or "layer1.0.conv1"), so a
name alone is ambiguous in a nested model; masks are matched to weights by walking the
state_dict forward, taking the next weight whose module has that leaf name (and, when
the state has them, ``N[i]`` elements).

A file is the authors' checkpoint when it holds their signature entries (model, run_id,
cfg and pruner); any other dict with a model state is named by what it holds: a training
checkpoint (model beside optimizer, epoch, ...) or a wrapped state_dict.

Mask sources, in the order they are looked for:
    pruner       the authors' backward_masks (dense layers have no entry in ``masks``)
    masks        masks saved beside the model state: a "masks" or "mask" entry ({weight
                 or module name: 0/1 tensor}, or a list with one tensor or None per
                 Conv/Linear weight, in the state's order), top-level "<weight>_mask"
                 tensors, or "<weight>_mask" buffers in the state beside their weight
    weight_mask  prune's ``<name>_orig`` and ``<name>_mask`` pairs: the weight is
                 ``<name>_orig * <name>_mask``
    zeros        nothing recorded: each Conv/Linear weight's (and attention's stacked
                 ``in_proj_weight``'s) mask is ``weight != 0`` (a weight grown at zero
                 and not yet updated counts as pruned), as for the bare torchvision
                 state_dicts the authors publish for ImageNet

Key variants are made ours after the masks are matched: a ``module.`` (DDP) or
``_orig_mod.`` (torch.compile) prefix every key shares is stripped, and torchvision's
older ViT MLP names ``mlp.linear_1``/``mlp.linear_2`` become ``mlp.0``/``mlp.3``
(``recognition.canonical_keys``), in the state and the masks alike.
"""

import dataclasses
import os
import posixpath

import numpy as np

from .recognition import canonical_keys

MASK_SOURCES = ("pruner", "masks", "weight_mask", "zeros")

# Checkpoint.get_state()'s keys: the Checkpoint dataclass fields without a leading "_".
AUTHORS_KEYS = ("run_id", "cfg", "model", "optimizer", "scheduler", "scaler", "pruner",
                "epoch", "step", "best_acc", "current_acc", "is_best", "checkpoint_dir",
                "f_name", "best_file_name", "parent_dir")
# Beside "model", these mark the authors' Checkpoint.get_state() (pruner may be None).
_AUTHORS_SIGNATURE = ("run_id", "cfg", "pruner")
# Entries holding masks beside a model state.
_MASK_ENTRIES = ("masks", "mask")
# Beside "model", any of these marks a training checkpoint rather than a wrapper.
_TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "pruner", "cfg", "epoch", "step")
_STATE_OBJECTS = ("model", "optimizer", "scheduler", "scaler", "pruner")
# Other programs' wrappers around a model state_dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# DistributedDataParallel's and torch.compile's key prefixes.
_PREFIXES = ("module.", "_orig_mod.")
# Pruner attributes worth carrying into ``meta`` ("step" becomes "pruner_step").
_PRUNER_META = ("dense_allocation", "S", "N", "module_names", "step", "rigl_steps",
                "delta_T", "alpha", "T_end", "sparsity_distribution", "erk_power_scale",
                "static_topo", "grad_accumulation_n", "ignore_linear_layers",
                "ignore_mha_layers", "keep_first_layer_dense", "static_ablation",
                "dynamic_ablation", "filter_ablation_threshold",
                "min_salient_weights_per_neuron", "use_sparse_const_fan_in_for_ablation",
                "initialize_grown_weights", "no_ablation_module_names",
                "static_ablated_filters", "itop_rs", "active_neuron_count")
ZEROS_NOTE = ("masks inferred from weight != 0: a weight that was active but exactly zero "
              "(grown at zero and not yet updated) counts as pruned, so active counts are "
              "lower bounds")

@dataclasses.dataclass
class ImportedCheckpoint:
    """A PyTorch checkpoint file's model, masks and training metadata, validated.

    path: the file read.
    kind: "srigl-authors" (the authors' ``Checkpoint.get_state()``), "training-checkpoint"
        (another program's {"model": ..., "optimizer": ..., "epoch": ...}), "state_dict"
        (a bare {name: tensor} dict) or "wrapped-state-dict" ({"state_dict": {...}} and
        alike).
    state_dict: {torch key: np.ndarray} in the file's order, prefixes ("module.")
        stripped, ViT's old MLP names renamed, prune pairs replaced by the pruned tensor.
    masks: {torch weight key: bool array of the weight's shape}; a weighted layer
        without an entry is dense.
    mask_source: one of MASK_SOURCES (see the module docstring).
    meta: training metadata: epoch, step, dense_allocation, S, N, module_names,
        pruner_step, ... as plain values (arrays and Placeholders summarised as strings),
        dense_layers, and per masked weight ``fan_in`` [min, max] over active neurons
        and ``ablated`` neuron counts.
    notes: sentences for a report: what was found and what was assumed.
    """
    path: str
    kind: str
    state_dict: dict
    masks: dict
    mask_source: str
    meta: dict
    notes: list


def read_torch_checkpoint(path):
    """Read the PyTorch checkpoint at ``path`` (no torch needed) -> ImportedCheckpoint.

    Recognises the SRigL authors' training checkpoint, a bare state_dict (prune pairs
    included) and a state_dict wrapped in {"state_dict": ...}; anything else, and any
    inconsistency (a mask whose shape is not its weight's, a pruner whose mask count
    differs from its module_names or weighted layers, a masked layer missing from the
    model state), is one ValueError naming the file and what was found.
    """
    from . import torch_format
    path = os.fspath(path)
    return _interpret(torch_format.load(path), path)


def _interpret(obj, path):
    """The ImportedCheckpoint of ``obj``, the unpickled contents of ``path``."""
    summary = _Summary()   # one budget for the whole file's metadata
    kind, state, pruner, meta, notes = _locate_state(obj, path, summary)
    state = _strip_prefixes(_check_state(state, path), notes)
    state, pair_masks = _resolve_prune_pairs(state, path)
    # A bare state_dict's own "<name>_mask" entries are buffers (or prune pairs), not a
    # file's top-level mask entries.
    state, saved_masks, where = _saved_masks({} if kind == "state_dict" else obj, state, path)
    if pruner is not None:
        masks, pruner_meta, dense = _pruner_masks(pruner, state, path, summary)
        meta.update(pruner_meta, dense_layers=dense)
        mask_source = "pruner"
        notes.append(f"masks from the pruner's backward_masks ({meta['pruner_class']}, "
                     f"dense_allocation {meta.get('dense_allocation')}); dense layers: "
                     f"{dense or 'none'}")
        if pair_masks or saved_masks:
            notes.append(f"the file also has masks ({list(pair_masks or saved_masks)}); "
                         f"the pruner's masks are used")
    elif saved_masks:
        masks, mask_source = saved_masks, "masks"
        notes.append(f"masks from {where}: {list(saved_masks)}")
    elif pair_masks:
        masks, mask_source = pair_masks, "weight_mask"
        notes.append(f"masks from torch.nn.utils.prune pairs (weight = weight_orig * "
                     f"weight_mask): {list(pair_masks)}")
    else:
        masks, mask_source = {key: state[key] != 0 for key in sparse_weight_keys(state)}, "zeros"
        notes.append(ZEROS_NOTE)
    state, renamed = canonical_keys(state)
    if renamed:
        masks = canonical_keys(masks)[0]
        notes.append(renamed)
    outside = {key: int(np.count_nonzero(state[key][~mask])) for key, mask in masks.items()}
    outside = {key: count for key, count in outside.items() if count}
    if outside:
        notes.append(f"non-zero weights outside their mask (kept as stored): {outside}")
    meta["fan_in"], meta["ablated"] = _fan_in_summary(masks)
    return ImportedCheckpoint(path=path, kind=kind, state_dict=state, masks=masks,
                              mask_source=mask_source, meta=meta, notes=notes)


def _locate_state(obj, path, summary):
    """(kind, model state, pruner state or None, meta, notes) of the file's object."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint: expected a dict (a state_dict or a "
                         f"training checkpoint), found {_describe(obj)}"
                         f"{_whole_model_hint(obj)}")
    if _is_tensor_dict(obj):
        return "state_dict", obj, None, {}, []
    if "model" in obj and any(key in obj for key in _TRAINING_KEYS):
        if not isinstance(obj["model"], dict):
            raise ValueError(f"{path}: a training checkpoint (keys {_key_list(obj)}) whose "
                             f"'model' entry is {_describe(obj['model'])}, not a state_dict"
                             f"{_whole_model_hint(obj['model'])}")
        meta = _checkpoint_meta(obj, summary)
        if not all(key in obj for key in _AUTHORS_SIGNATURE):
            return "training-checkpoint", obj["model"], None, meta, [
                f"training checkpoint (keys {_key_list(obj)}): model state read from the "
                f"'model' entry; epoch {meta.get('epoch')}, step {meta.get('step')}"]
        notes = [f"SRigL authors' training checkpoint: epoch {meta.get('epoch')}, "
                 f"step {meta.get('step')}"]
        if obj.get("pruner") is None:
            notes.append("the checkpoint's pruner is None: a dense run (or one saved "
                         "without its RigL scheduler)")
        return "srigl-authors", obj["model"], obj.get("pruner"), meta, notes
    wrapper = next((key for key in _WRAPPER_KEYS if _is_tensor_dict(obj.get(key))), None)
    if wrapper is not None:
        return "wrapped-state-dict", obj[wrapper], None, {}, [
            f"model state read from the {wrapper!r} entry; other keys ignored: "
            f"{_key_list(obj, skip=(wrapper,))}"]
    if sum(key in obj for key in AUTHORS_KEYS) >= 2:
        raise ValueError(f"{path}: looks like a training checkpoint (keys {_key_list(obj)}) "
                         f"but has no 'model' entry: no weights")
    raise ValueError(f"{path}: not a checkpoint this reader knows: a dict with keys "
                     f"{_key_list(obj)}; expected a state_dict ({{name: tensor}}), the SRigL "
                     f"authors' training checkpoint (keys model, optimizer, pruner, epoch, "
                     f"...) or {{'state_dict': {{name: tensor}}}}")


def _whole_model_hint(obj):
    """A hint for a pickled nn.Module (``torch.save(model)``), else ""."""
    from .torch_format import is_placeholder
    state = obj.state if is_placeholder(obj) else None
    if not (isinstance(state, dict) and "_parameters" in state and "_modules" in state):
        return ""
    return (": torch.save(model) pickles the whole module, which only its class's code can "
            "rebuild; save torch.save(model.state_dict(), path) instead")


# -- the model state ----------------------------------------------------------------------

def _is_tensor_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(key, str) and isinstance(value, np.ndarray)
                    for key, value in obj.items()))


def _check_state(state, path):
    if not state:
        raise ValueError(f"{path}: the model state is empty")
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: model state keys must be strings, got {key!r}")
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: model state entry {key!r} must be a tensor, "
                             f"found {_describe(value)}")
        if value.dtype.kind == "c":
            raise ValueError(f"{path}: model state entry {key!r} holds complex numbers "
                             f"({value.dtype}): weights are real, and the imaginary parts "
                             f"would be lost")
    return state


def _strip_prefixes(state, notes):
    """``state`` without a prefix every key shares ("module." from DDP), repeatedly."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(key.startswith(prefix) and len(key) > len(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                notes.append(f"stripped the {prefix!r} prefix from every key")
                stripped = True
    return state


def _resolve_prune_pairs(state, path):
    """(state, masks): each ``<name>_orig``/``<name>_mask`` pair replaced by
    ``<name> = orig * mask`` at the pair's place, and masks {<name>: mask != 0}."""
    bases = [key[:-len("_orig")] for key in state if key.endswith("_orig")]
    masks = {}
    for base in bases:
        orig, mask = state[base + "_orig"], state.get(base + "_mask")
        if mask is None:
            raise ValueError(f"{path}: prune pair incomplete: {base + '_orig'!r} has no "
                             f"{base + '_mask'!r}")
        if mask.shape != orig.shape:
            raise ValueError(f"{path}: {base + '_mask'!r} has shape {mask.shape}, "
                             f"{base + '_orig'!r} {orig.shape}")
        if base in state:
            raise ValueError(f"{path}: both {base!r} and the prune pair {base + '_orig'!r} "
                             f"are present")
        masks[base] = _as_bool_mask(mask, f"{path}: {base + '_mask'!r}")
    if not masks:
        return state, masks
    resolved = {}
    for key, value in state.items():
        if key.endswith("_orig") and key[:-len("_orig")] in masks:
            base = key[:-len("_orig")]
            resolved[base] = value * masks[base].astype(value.dtype)
        elif not (key.endswith("_mask") and key[:-len("_mask")] in masks):
            resolved[key] = value
    return resolved, masks


def _saved_masks(obj, state, path):
    """(state, {weight key: bool mask}, where they came from) for masks saved beside the
    model state (see MASK_SOURCES); state without its "<weight>_mask" buffers."""
    buffers = {key: value for key, value in state.items()
               if key.endswith("_mask") and key[:-len("_mask")] in state}
    if buffers:
        state = {key: value for key, value in state.items() if key not in buffers}
        found = {key[:-len("_mask")]: value for key, value in buffers.items()}
        return state, _masks_for(found, state, path, "state"), "'<weight>_mask' buffers"
    entry = next((key for key in _MASK_ENTRIES if key in obj), None)
    if entry is not None:
        found = obj[entry]
        if isinstance(found, (list, tuple)):
            keys = sparse_weight_keys(state)
            if len(found) != len(keys):
                raise ValueError(f"{path}: the {entry!r} entry lists {len(found)} masks but "
                                 f"the model state has {len(keys)} Conv/Linear weights "
                                 f"({keys})")
            found = {key: mask for key, mask in zip(keys, found) if mask is not None}
        if not isinstance(found, dict):
            raise ValueError(f"{path}: the {entry!r} entry must map weight names to 0/1 "
                             f"tensors, found {_describe(found)}")
        return state, _masks_for(found, state, path, entry), f"the {entry!r} entry"
    tops = {key[:-len("_mask")]: value for key, value in obj.items()
            if isinstance(key, str) and key.endswith("_mask")
            and isinstance(value, np.ndarray)}
    return state, _masks_for(tops, state, path, "file"), "the '<weight>_mask' entries"


def _masks_for(found, state, path, entry):
    """{weight key of ``state``: bool mask} for ``found``'s {name: 0/1 tensor}; a name is
    the weight key or its module's, either with the state's stripped prefixes."""
    masks = {}
    for name, mask in found.items():
        what = f"{path}: {entry} mask {name!r}"
        if not isinstance(name, str) or not isinstance(mask, np.ndarray):
            raise ValueError(f"{what} must be a tensor named by a string, found "
                             f"{_describe(mask)}")
        bare = name
        for prefix in _PREFIXES:
            bare = bare[len(prefix):] if bare.startswith(prefix) else bare
        key = next((key for key in (name, bare, f"{name}.weight", f"{bare}.weight")
                    if key in state), None)
        if key is None:
            raise ValueError(f"{what} names no weight of the model state (weights: "
                             f"{sparse_weight_keys(state)})")
        if mask.shape != state[key].shape:
            raise ValueError(f"{what} has shape {mask.shape}, the weight {key!r} "
                             f"{state[key].shape}")
        masks[key] = _as_bool_mask(mask, what)
    return masks


def _as_bool_mask(mask, what):
    if mask.dtype == np.bool_:
        return mask
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{what} must hold only 0 and 1, got values "
                         f"{np.unique(mask)[:5].tolist()}...")
    return mask != 0


def sparse_weight_keys(state):
    """Keys of the weights a mask can cover, in the state's order: Conv/Linear weights
    (``*.weight`` with 2 or more dimensions) and attention's stacked Q, K, V projections
    (``*.in_proj_weight``)."""
    return [key for key, value in state.items()
            if (key == "weight" or key.endswith((".weight", ".in_proj_weight")))
            and value.ndim >= 2]


def _leaf_name(key):
    """The authors' module name of a weight key: its module's last component."""
    module = key.rpartition(".")[0]
    return module.rpartition(".")[2] if module else None


# -- the pruner state ---------------------------------------------------------------------

def _pruner_masks(pruner, state, path, summary):
    """({weight key: bool mask}, meta, dense weight keys) from RigLScheduler.state_dict()."""
    if not isinstance(pruner, dict):
        raise ValueError(f"{path}: the 'pruner' entry must be the RigLScheduler state_dict "
                         f"(a dict), found {_describe(pruner)}")
    backward_masks = pruner.get("backward_masks")
    if not isinstance(backward_masks, (list, tuple)):
        raise ValueError(f"{path}: the pruner state has no backward_masks list (found "
                         f"{_describe(backward_masks)})")
    n_masks = len(backward_masks)
    for i, mask in enumerate(backward_masks):
        if mask is not None and not isinstance(mask, np.ndarray):
            raise ValueError(f"{path}: backward_masks[{i}] must be a bool tensor or None, "
                             f"found {_describe(mask)}")
    numels, names = pruner.get("N"), pruner.get("module_names")
    if numels is not None and not _is_list_of(numels, int):
        raise ValueError(f"{path}: the pruner's N must be a list of layer sizes, found "
                         f"{_describe(numels)}")
    if numels is not None and len(numels) != n_masks:
        raise ValueError(f"{path}: the pruner has {n_masks} backward_masks but {len(numels)} "
                         f"layer sizes N")
    if names is not None and not _is_list_of(names, (str, type(None))):
        raise ValueError(f"{path}: the pruner's module_names must be a list of names, found "
                         f"{_describe(names)}")
    if names is None:
        keys = sparse_weight_keys(state)
        if len(keys) != n_masks:
            raise ValueError(f"{path}: the pruner has {n_masks} backward_masks but the model "
                             f"state has {len(keys)} weighted layers ({keys})")
    else:
        if len(names) != n_masks:
            raise ValueError(f"{path}: the pruner has {n_masks} backward_masks but "
                             f"{len(names)} module_names ({list(names)})")
        keys = _match_module_names(names, numels, state, path)

    masks, dense = {}, []
    for i, (key, mask) in enumerate(zip(keys, backward_masks)):
        weight = state[key]
        if numels is not None and int(numels[i]) != weight.size:
            raise ValueError(f"{path}: pruner N[{i}] = {numels[i]} but {key!r} has "
                             f"{weight.size} elements")
        if mask is None:
            dense.append(key)
            continue
        if mask.shape != weight.shape:
            raise ValueError(f"{path}: backward_masks[{i}] (layer {_leaf_name(key)!r}, "
                             f"weight {key!r}) has shape {mask.shape}, the weight "
                             f"{weight.shape}")
        masks[key] = _as_bool_mask(mask, f"{path}: backward_masks[{i}]")

    meta = {("pruner_step" if name == "step" else name): summary(pruner[name])
            for name in _PRUNER_META if name in pruner}
    meta["pruner_keys"] = list(pruner)
    # Only the constant fan-in scheduler (SRigL) records dynamically ablated neurons.
    meta["pruner_class"] = ("RigLConstFanScheduler" if "dynamically_ablated_neuron_idx" in pruner
                            else "RigLScheduler")
    if "dynamically_ablated_neuron_idx" in pruner:
        meta["dynamically_ablated"] = [len(ids) if isinstance(ids, (list, tuple)) else summary(ids)
                                       for ids in pruner["dynamically_ablated_neuron_idx"]]
    return masks, meta, dense


def _is_list_of(value, types):
    return isinstance(value, (list, tuple)) and all(
        isinstance(item, types) and not isinstance(item, bool) for item in value)


def _match_module_names(names, numels, state, path):
    """The weight key of each authors' module name, walking the state forward."""
    candidates = [key for key in state
                  if key.rpartition(".")[2] in ("weight", "in_proj_weight")]
    keys, start = [], 0
    for i, name in enumerate(names):
        found = next((j for j in range(start, len(candidates))
                      if _leaf_name(candidates[j]) == name
                      and (numels is None or state[candidates[j]].size == int(numels[i]))),
                     None)
        if found is None:
            named = [key for key in candidates[start:] if _leaf_name(key) == name]
            if named:
                raise ValueError(f"{path}: pruner N[{i}] = {numels[i]} but {named[0]!r} (layer "
                                 f"{i}, {name!r}) has {state[named[0]].size} elements")
            after = f"after {keys[-1]!r}" if keys else "in the state"
            raise ValueError(f"{path}: pruner layer {i} ({name!r}) has no weight in the model "
                             f"state: no key '{name}.weight' {after} (weights: {candidates})")
        keys.append(candidates[found])
        start = found + 1
    return keys


# -- metadata -----------------------------------------------------------------------------

def _checkpoint_meta(obj, summary):
    """The training checkpoint's plain entries, and summaries of its state objects."""
    meta = {key: summary(value) for key, value in obj.items() if key not in _STATE_OBJECTS}
    optimizer = obj.get("optimizer")
    if isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list):
        meta["optimizer"] = {
            "param_groups": [summary({k: v for k, v in group.items() if k != "params"})
                             for group in optimizer["param_groups"] if isinstance(group, dict)],
            "state_entries": len(optimizer.get("state") or {})}
    elif "optimizer" in obj:
        meta["optimizer"] = _describe(optimizer)
    for key in ("scheduler", "scaler"):
        if key in obj:
            meta[key] = summary(obj[key])
    return meta


def _fan_in_summary(masks):
    """({key: [min, max] fan-in over active neurons}, {key: ablated neuron count})."""
    fan_in, ablated = {}, {}
    for key, mask in masks.items():
        per_neuron = mask.reshape(mask.shape[0], -1).sum(axis=1)
        active = per_neuron[per_neuron > 0]
        fan_in[key] = [int(active.min()), int(active.max())] if active.size else [0, 0]
        ablated[key] = int(np.count_nonzero(per_neuron == 0))
    return fan_in, ablated


class _Summary:
    """``summary(value)``: ``value`` as plain data, for a report: 0-d arrays as numbers,
    arrays and Placeholders as strings (a pickled pathlib path as its path), containers
    rebuilt as dicts and lists.

    A file's metadata is spelled out at most ``NODES`` values in all (a pickle can put
    one list in itself, or share it down a chain of tuples so that spelling it out
    takes 2**depth steps) and ``DEPTH`` containers deep; past either, and for an
    integer too long to print, a short description ("<list of 9000 items>") stands in
    for the value.
    """

    NODES = 20_000
    DEPTH = 16

    def __init__(self):
        self.left = self.NODES

    def __call__(self, value, depth=0):
        from .torch_format import is_placeholder
        if is_placeholder(value):
            if (value.module == "pathlib" and value.args
                    and all(isinstance(part, str) for part in value.args)):
                return posixpath.join(*value.args)   # PosixPath("/", "tmp"): its parts
            return f"{value.module}.{value.name}"
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.item() if value.ndim == 0 else f"array {value.dtype} {value.shape}"
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            return f"<integer of {value.bit_length()} bits>"
        if isinstance(value, (dict, list, tuple)):
            if depth >= self.DEPTH or len(value) > self.left:
                return f"<{type(value).__name__} of {len(value)} items>"
            self.left -= len(value)   # its items, spelled out or described, each one value
            if isinstance(value, dict):
                return {key: self(item, depth + 1) for key, item in value.items()}
            return [self(item, depth + 1) for item in value]
        return value


def _describe(obj):
    from .torch_format import is_placeholder
    if is_placeholder(obj):
        return f"a {obj.module}.{obj.name} object"
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} tensor of shape {obj.shape}"
    if isinstance(obj, dict):
        return f"a dict with keys {_key_list(obj)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"{type(obj).__name__} {obj!r:.60}"


def _key_list(obj, skip=(), limit=12):
    keys = [key for key in obj if key not in skip]
    shown = ", ".join(repr(key) for key in keys[:limit])
    return f"[{shown}, ...] ({len(keys)} keys)" if len(keys) > limit else f"[{shown}]"
