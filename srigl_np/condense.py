"""``python -m srigl_np.condense SOURCE --out model.npz``: condense a trained model for inference.

SOURCE is any model ``python -m srigl_np.audit`` reads that maps onto a known
architecture: a run directory of ``python -m srigl_np.train`` or its checkpoint .npz
(condensed by its masks, with the run's input statistics, so the result takes raw
uint8 images), a PyTorch checkpoint or state_dict (the paper's architectures as the
authors' code or torchvision save them, recognised from their keys or named by --arch,
the authors' MNIST network, a stack of Linear layers; see ``srigl_np.formats``), or a
scipy.sparse .npz (one layer). It prints, per weight, whether it was condensed, padded or kept dense and why
(residual blocks, squeeze-excite and attention included), and writes the condensed
model atomically to --out (an existing file only with --force), then the input the
model expects: with input statistics, uint8 images; a float array only with
``input_scale`` ("uint8", "unit" for [0, 1] images, "normalised") given to
``logits``/``predict``. ``--evaluate DATASET`` then reports the condensed model's test
accuracy and how often its predictions agree with the dense model's.
"""

import os
import sys

import numpy as np

from . import cli
from .cli import command, create_parser
from .data import DATASET_NAMES
from .formats.layouts import ARCHITECTURE_NAMES


PROG = "python -m srigl_np.condense"


def make_parser():
    parser = create_parser(PROG, __doc__)
    parser.add_argument("source", metavar="SOURCE", type=cli.path,
                        help="run directory or model file")
    parser.add_argument("--out", required=True, type=cli.path,
                        help="where to write the condensed model (.npz)")
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it exists (default: refuse)")
    parser.add_argument("--evaluate", metavar="DATASET", choices=DATASET_NAMES,
                        help=f"report accuracy on a dataset's test split ({', '.join(DATASET_NAMES)})")
    parser.add_argument("--data-path", type=cli.path,
                        help="directory of the dataset's IDX files (default: the search of "
                             "srigl_np.data)")
    parser.add_argument("--arch", choices=ARCHITECTURE_NAMES, default=None,
                        help="read a PyTorch file as this architecture instead of "
                             "recognising it from its keys and shapes (default: recognise)")
    parser.add_argument("--input-stats", type=cli.numbers(), nargs=2, metavar=("MEAN", "STD"),
                        help="the training images' mean and std on the [0, 1] scale, one "
                             "number each or one per channel, comma-separated (ImageNet: "
                             "0.485,0.456,0.406 0.229,0.224,0.225), stored so the model "
                             "takes raw uint8 images; std > 0 (default: the run's own; none "
                             "for other sources)")
    return parser


def build_source(path, input_stats=None, arch=None):
    """(dense Sequential or None, masks, input_stats, notes) for SOURCE ``path``, or a
    ready CondensedModel for a scipy matrix (returned in place of the Sequential);
    ``arch`` names a PyTorch file's architecture (``formats.model_map.to_model``)."""
    from . import model_audit
    from .formats.sniff import source_kind

    # The kind only: each source below is read once, by the loader that builds from it.
    kind = source_kind(path)
    if arch is not None and kind != "torch":
        raise ValueError(f"--arch names the architecture of a PyTorch file; {path} is a "
                         f"srigl_np {kind}, which records its own model")
    if kind in ("run", "checkpoint"):
        from .formats.checkpoint import load_model

        run = load_model(path)
        return (run.model, run.masks, input_stats or run.input_stats,
                [model_audit.run_note(run)])
    if kind == "torch":
        from .formats.importing import read_torch_checkpoint
        from .formats.model_map import to_model

        imported = read_torch_checkpoint(path)
        model, masks, notes = to_model(imported, arch=arch)
        if model is not None and imported.mask_source == "pruner":
            # The pruner records every weighted layer: one without a mask is dense, all
            # of its weights are weights (also an exact 0).
            from .dst.sparsity import sparse_parameter_names

            params = model.named_parameters()   # attention's in_proj_weight included
            masks = {**{name: np.ones(params[name].shape, dtype=bool)
                        for name in sparse_parameter_names(model)}, **masks}
        if model is None:
            raise ValueError(f"{path}: {'; '.join(notes)} (python -m srigl_np.audit still "
                             f"audits its layers)")
        return model, masks, input_stats, list(imported.notes) + notes
    if kind == "scipy":
        from .formats.scipy_npz import load_sparse_npz
        from .inference.condensed import CondensedLinear
        from .inference.condensed_model import CondensedModel

        matrix = load_sparse_npz(path)   # its errors name the file
        try:
            layer = CondensedLinear.from_csr(matrix)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return CondensedModel([layer]), {}, None, [model_audit.SCIPY_NOTE]
    raise ValueError(f"{path} is already a condensed model")


def _evaluate(model, condensed, args, log):
    from .data import channel_stats, load_dataset, normalize

    dataset = load_dataset(args.evaluate, args.data_path)
    if condensed.input_stats is not None:
        stats, where = condensed.input_stats, "the model's input statistics"
    else:
        stats, where = channel_stats(dataset.x_train), "statistics of this training split"
    x = normalize(dataset.x_test, *stats)
    condensed_pred = np.concatenate([condensed.predict(x[i:i + 1000], input_scale="normalised")
                                     for i in range(0, len(x), 1000)])
    line = (f"{args.evaluate} test split ({len(x)} images, normalised with {where}): "
            f"condensed accuracy {100 * float((condensed_pred == dataset.y_test).mean()):.2f}%")
    if model is not None:
        dense_pred = np.concatenate([model.forward(x[i:i + 1000], training=False).argmax(1)
                                     for i in range(0, len(x), 1000)])
        line += (f", dense accuracy {100 * float((dense_pred == dataset.y_test).mean()):.2f}%, "
                 f"predictions agree on {100 * float((dense_pred == condensed_pred).mean()):.2f}%")
    log(line)


@command(PROG, errors=(TypeError,))
def main(argv=None, log=print):
    parser = make_parser()
    args = parser.parse_args(argv)
    from .inference.condensed_model import check_input_stats
    from .inference.condensing import condense

    if args.input_stats is not None:
        try:
            check_input_stats(args.input_stats)
        except ValueError as exc:
            shown = " ".join(",".join(map(str, np.atleast_1d(v))) for v in args.input_stats)
            parser.error(f"--input-stats {shown}: {exc}")
    problem = cli.check_output_file("--out", args.out)
    if problem:
        raise ValueError(problem)
    if os.path.exists(args.out) and not args.force:
        raise ValueError(f"--out {args.out} exists; pass --force to replace it")
    model, masks, input_stats, notes = build_source(args.source, args.input_stats, args.arch)
    for note in notes:
        log(f"note: {note}")
    if hasattr(model, "stages"):     # a scipy matrix: already one condensed layer
        condensed, model = model, None
        log(f"matrix: condensed, {condensed.stages[0]!r}")
    else:
        condensed = condense(model, masks=masks, input_stats=input_stats, warn=False)
        for entry in condensed.report:
            log(f"layer {entry['layer']} {entry['type']}: {entry['result']} "
                f"({entry['reason']}; structure from {entry['structure']}; "
                f"{entry['n_active']}/{entry['n_out']} neurons active"
                + (f", k={entry['k']})" if entry["k"] is not None else ")"))
    condensed.save(args.out)
    log(f"wrote {args.out}; {condensed.expects}")
    if args.evaluate:
        _evaluate(model, condensed, args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
