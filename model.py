"""python model.py [--build EffB3 --head multi --size 224 224]

The registered backbones (maskcls/models.py): lists every name train.py's --model accepts, or builds one
(random weights, no download) and prints its size and output shape. Any timm name also works, as timm:NAME.
Adding a backbone is one decorated function in maskcls/models.py:

    @register_model("ConvNeXtT")
    def convnext_t(**kw): return timm_backbone("convnext_tiny", **kw)
"""

from __future__ import annotations

import argparse

from maskcls import models
from maskcls.cli import HelpFormatter
from maskcls.utils import run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--build", metavar="NAME", help="build this backbone with random weights and describe it")
    parser.add_argument("--head", default="multi", choices=models.HEADS, help="head to build with --build")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="input size")
    return parser


def describe(name: str, head: str, size: tuple[int, int]) -> str:
    import torch

    net = models.create_model(name, head=head, pretrained=False).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, *size))
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return f"{models.resolve_model_name(name)} ({head} head): {params:.1f} M parameters, output {tuple(out.shape)}"


def main(args: argparse.Namespace) -> int:
    if args.build:
        print(describe(args.build, args.head, tuple(args.size)))
        return 0
    print("registered backbones: " + ", ".join(models.MODELS.names()))
    print("any timm model also works as timm:NAME (e.g. timm:convnext_tiny); heads: " + ", ".join(models.HEADS))
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
