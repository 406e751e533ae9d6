"""Write tests/data/torchvision_keys.json: the state_dict keys and shapes of torchvision's
full-size ResNet-50, MobileNet-V3 Large and Small and ViT-B/16 (1000 classes), the
ground truth ``formats.layouts`` is tested against without torchvision.

    python tools/dump_torchvision_keys.py [--out tests/data/torchvision_keys.json]

Needs torch and torchvision (0.28.0 wrote the committed file). torchvision's wheel from
PyPI is built for the CUDA torch; beside the CPU build its import stops at its
operator registrations ("operator torchvision::nms does not exist") although the model
definitions need no operator, so the fake-kernel registration is skipped here.
"""

import argparse
import json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/data/torchvision_keys.json")
    args = parser.parse_args(argv)
    import torch.library

    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    import torchvision
    from torchvision import models

    keys = {"torchvision": torchvision.__version__}
    for name in ("resnet50", "mobilenet_v3_large", "mobilenet_v3_small", "vit_b_16"):
        state = getattr(models, name)(weights=None).state_dict()
        keys[name] = [[key, list(tensor.shape)] for key, tensor in state.items()]
    with open(args.out, "w") as f:
        json.dump(keys, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
