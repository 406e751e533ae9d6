"""Write tests/data/authors/: real training checkpoints of the SRigL authors' code.

Runs the authors' ``rigl_torch`` package (github.com/calgaryml/condensed-sparsity, commit
3052bb8bd708918576df4e6e66f273e37c960b24) on the CPU: their model, optimizer, LR
scheduler and ``RigLConstFanScheduler`` (dynamic ablation on), a few training steps on
random data with RigL updates every 2 steps, then ``torch.save(Checkpoint.get_state())``
exactly as their ``Checkpoint.save_checkpoint`` does. The config is their
``configs/config.yaml`` merged with the model's groups, composed with omegaconf (hydra's
own key dropped, as hydra does); the LR scheduler is torch's StepLR (their warm-up ones
pass ``verbose``, which torch >= 2.7 refuses), RigL runs every 2 steps to T_end 36.
Nothing of theirs is copied here: their code is imported from the checkout named on the
command line. wandb, hydra, dotenv and torchvision are stubbed (only imported, never
needed on this path). torch 2.13 (CPU) and omegaconf 2.4 wrote the committed files; a
torch.load of the files needs omegaconf installed, our reader does not.

    pip install omegaconf    # and torch (CPU is enough)
    git clone https://github.com/calgaryml/condensed-sparsity /tmp/authors
    git -C /tmp/authors checkout 3052bb8bd708918576df4e6e66f273e37c960b24
    python tools/make_authors_checkpoints.py /tmp/authors [--out tests/data/authors]

Files written:
    mnist.pt          their MnistNet (rigl_torch/models/mnist.py) narrowed to 8/16
                      channels and 32 hidden units (full size takes 12 MB), ERK at
                      dense_allocation 0.1
    skinny_resnet.pt  their SkinnyResNet18 with a diet leaving 8/16/16/32 channels
                      (their "skinny_resnet18" model), ERK at dense_allocation 0.2
Each run asks for 90% salient weights per neuron (their config: 30%), so that dynamic
ablation removes neurons within its 9 steps. Reruns give the same files (seeded).
"""

import argparse
import importlib.abc
import importlib.machinery
import os
import pathlib
import sys
import types

_STUBBED = ("wandb", "hydra", "dotenv", "torchvision")


class _StubModule(types.ModuleType):
    """A module whose every attribute is a fresh inert class (for isinstance checks)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.load_dotenv = lambda *args, **kwargs: None
        return module

    def exec_module(self, module):
        pass


def _config(authors, model_name, dense_allocation):
    from omegaconf import OmegaConf

    configs = pathlib.Path(authors) / "configs"
    cfg = OmegaConf.load(configs / "config.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    dataset = "mnist" if model_name == "mnist" else "cifar10"
    for group, name in (("dataset", dataset), ("model", model_name),
                        ("rigl", "mnist" if model_name == "mnist" else "resnet18"),
                        ("training", "mnist" if model_name == "mnist" else "resnet18"),
                        ("compute", dataset)):
        cfg = OmegaConf.merge(cfg, {group: OmegaConf.load(configs / group / f"{name}.yaml")})
    cfg.rigl.dense_allocation = dense_allocation
    cfg.rigl.delta = 2
    # Demand more salient weights than a few random steps leave, so neurons get ablated.
    cfg.rigl.min_salient_weights_per_neuron = 0.9
    cfg.rigl.grad_accumulation_n = 1
    cfg.compute.no_cuda, cfg.compute.distributed = True, False
    # Their warm-up schedulers pass `verbose`, which torch >= 2.7 no longer takes.
    cfg.training.scheduler, cfg.training.step_size = "step_lr", 77
    cfg.experiment.run_id = f"fixture-{model_name}"
    return cfg


def _narrow_mnist_net(model):
    """Their MnistNet with its four layers replaced by narrower ones of the same kinds
    (8 and 16 channels, 32 hidden units; their forward unchanged): 75k weights, not 1.2M."""
    import torch.nn as nn

    model.conv1, model.conv2 = nn.Conv2d(1, 8, 3, 1), nn.Conv2d(8, 16, 3, 1)
    model.fc1, model.fc2 = nn.Linear(16 * 12 * 12, 32), nn.Linear(32, 10)
    return model


def _skinny_diet(model_factory):
    """Diet (channels removed per weighted layer) leaving 8/16/16/32 channels a stage."""
    from rigl_torch.utils.rigl_utils import get_names_and_W

    full = model_factory.load_model("resnet18", "cifar10")
    names, weights = get_names_and_W(full)
    keep = {"conv1": 8, "layer1": 8, "layer2": 16, "layer3": 16, "layer4": 32}
    return [0 if name == "linear" else len(w) - keep[name.split(".")[0]]
            for name, w in zip(names, weights)]


def write_checkpoint(authors, model_name, dense_allocation, out, steps=9, seed=0):
    import torch
    import torch.nn.functional as F
    from torch.cuda.amp.grad_scaler import GradScaler

    from rigl_torch.models import ModelFactory
    from rigl_torch.optim import get_lr_scheduler, get_optimizer
    from rigl_torch.rigl_constant_fan import RigLConstFanScheduler
    from rigl_torch.utils.checkpoint import Checkpoint

    torch.manual_seed(seed)
    cfg = _config(authors, model_name, dense_allocation)
    if model_name == "mnist":
        model, shape = _narrow_mnist_net(ModelFactory.load_model("mnist", "mnist")), (1, 28, 28)
    else:
        cfg.rigl.diet = _skinny_diet(ModelFactory)
        model = ModelFactory.load_model("skinny_resnet18", "cifar10", diet=cfg.rigl.diet)
        shape = (3, 32, 32)
    optimizer = get_optimizer(cfg, model)
    scheduler = get_lr_scheduler(cfg, optimizer)
    scaler = GradScaler(enabled=False)
    pruner = RigLConstFanScheduler(
        model, optimizer, dense_allocation=cfg.rigl.dense_allocation,
        alpha=cfg.rigl.alpha, delta=cfg.rigl.delta, static_topo=cfg.rigl.static_topo,
        T_end=4 * steps, ignore_linear_layers=cfg.rigl.ignore_linear_layers,
        ignore_mha_layers=cfg.rigl.ignore_mha_layers,
        grad_accumulation_n=cfg.rigl.grad_accumulation_n,
        sparsity_distribution=cfg.rigl.sparsity_distribution,
        erk_power_scale=cfg.rigl.erk_power_scale,
        filter_ablation_threshold=cfg.rigl.filter_ablation_threshold,
        static_ablation=cfg.rigl.static_ablation, dynamic_ablation=cfg.rigl.dynamic_ablation,
        min_salient_weights_per_neuron=cfg.rigl.min_salient_weights_per_neuron,
        use_sparse_init=cfg.rigl.use_sparse_initialization,
        init_method_str=cfg.rigl.init_method_str,
        use_sparse_const_fan_in_for_ablation=cfg.rigl.use_sparse_const_fan_in_for_ablation,
        keep_first_layer_dense=cfg.rigl.keep_first_layer_dense,
        initialize_grown_weights=cfg.rigl.initialize_grown_weights,
        no_ablation_module_names=cfg.model.no_ablation_module_names)
    checkpoint = Checkpoint(run_id=cfg.experiment.run_id, cfg=cfg, model=model,
                            optimizer=optimizer, scheduler=scheduler, pruner=pruner,
                            epoch=0, step=0, parent_dir=cfg.paths.checkpoints,
                            scaler=scaler, checkpoint_dir=out)
    # train_rigl.py's train(): forward, backward, optimizer step, pruner().
    model.train()
    for step in range(1, steps + 1):
        data = torch.randn(16, *shape)
        target = torch.randint(0, 10, (16,))
        loss = F.cross_entropy(model(data), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        pruner()
    checkpoint.current_acc, checkpoint.step, checkpoint.epoch = 0.1, steps, 1
    scheduler.step()
    path = pathlib.Path(out) / f"{'mnist' if model_name == 'mnist' else 'skinny_resnet'}.pt"
    torch.save(checkpoint.get_state(), path)
    return path, pruner


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("authors", help="checkout of calgaryml/condensed-sparsity")
    parser.add_argument("--out", default="tests/data/authors")
    args = parser.parse_args(argv)
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, str(pathlib.Path(args.authors) / "src"))
    os.environ.setdefault("BASE_PATH", "/tmp/authors-fixture")
    os.environ.setdefault("NUM_WORKERS", "0")
    os.makedirs(args.out, exist_ok=True)
    for model_name, dense_allocation in (("mnist", 0.1), ("skinny_resnet18", 0.2)):
        path, pruner = write_checkpoint(args.authors, model_name, dense_allocation, args.out)
        print(f"{path}: {path.stat().st_size} bytes; pruner step {pruner.step}, "
              f"dynamically ablated {[len(i) for i in pruner.dynamically_ablated_neuron_idx]}")


if __name__ == "__main__":
    main()
