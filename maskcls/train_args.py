"""train.py's command line: the parser of every train.py flag, torch-free so that ``--help`` answers at once.

    from maskcls.train_args import get_args_parser
    args = get_args_parser().parse_args(["--model", "EffB3", "--lr", "1e-4"])

It lives in the package because sweep.py varies train.py's flags through this very parser (a variant is
checked and parsed exactly as train.py would), and the package never imports the root train.py.
"""

from __future__ import annotations

import argparse
import os

from maskcls import age, augment, losses, models, optim
from maskcls.cli import ExactlyN, HelpFormatter
from maskcls.config import TrainParser, flags, fold_value

# The first paragraph of train.py's docstring: the description at the top of `python train.py --help`.
DESCRIPTION = (
    "Train a mask/gender/age classifier; every run gets its own directory, the best model is picked by macro F1."
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = TrainParser(description=DESCRIPTION, formatter_class=HelpFormatter, allow_abbrev=False)
    g = parser.add_argument_group("model")
    g.add_argument(
        *flags("--model"),
        default="ResNet18",
        help=f"registered model ({', '.join(models.MODELS.names())}), 'timm:<name>' or a plain timm name",
    )
    g.add_argument(*flags("--head"), default="single", choices=models.HEADS, help="one 18-way head or mask/gender/age")
    g.add_argument(
        *flags("--head-weights"),
        type=float,
        nargs="+",
        action=ExactlyN,
        metavar=("MASK", "GENDER", "AGE"),
        default=[1.0, 1.0, 1.0],
        help="loss weight of each head (--head multi)",
    )
    g.add_argument(
        *flags("--age-head"),
        default="groups",
        choices=age.AGE_HEADS,
        help="--head multi's age part: 3 groups, or years: a distribution over the ages 18..60 (one logit per "
        "year), its mass <30 / 30..threshold-1 / from --age-old-threshold the group probabilities",
    )
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True, help="start from ImageNet weights"
    )
    g.add_argument(*flags("--weights"), default=None, help="local backbone weights (.pth/.safetensors), offline")
    g.add_argument(*flags("--drop-rate"), type=float, default=None, help="classifier dropout (None: model default)")

    g = parser.add_argument_group("loss")
    g.add_argument(*flags("--criterion"), default="ce", help=f"loss: {', '.join(losses.CRITERIA.names())}")
    for option in losses.criterion_flags():  # each loss's options declared with a flag (losses.register_criterion)
        kind, default = type(option.default), option.default
        g.add_argument(*flags(option.flag), type=kind, default=None, help=f"{option.help} (None: the loss's {default})")
    g.add_argument(
        *flags("--class-weights"),
        default="none",
        choices=("none", "balanced"),
        help="balanced: weight classes by inverse training frequency",
    )
    g.add_argument(
        *flags("--age-loss"),
        default=age.DEFAULT_AGE_LOSS,
        choices=age.AGE_LOSSES,
        help="--age-head years: dldl = KL to a Gaussian around the written age + L1 of the expected age in "
        "units of --age-sigma (DLDL-v2); dex = cross entropy on the written year (DEX); kl = the KL alone (DLDL)",
    )
    g.add_argument(
        *flags("--age-sigma"),
        type=float,
        default=age.DEFAULT_AGE_SIGMA,
        help="--age-loss dldl or kl: the Gaussian's width in years",
    )

    g = parser.add_argument_group("data")
    g.add_argument(*flags("--data-dir"), default="data", help="folder holding train/ and eval/ (docs/DATASET.md)")
    g.add_argument(
        *flags("--image-dir"),
        default="auto",
        choices=("auto", "images", "crops"),
        help="auto: face crops when train/crops_manifest.csv exists, else the photos",
    )
    g.add_argument(
        *flags("--resize"),
        type=int,
        nargs="+",
        action=ExactlyN,
        metavar=("H", "W"),
        default=[128, 96],
        help="input height and width (photos are 512x384)",
    )
    g.add_argument(*flags("--folds"), type=int, default=5, help="person-level stratified folds")
    g.add_argument(
        *flags("--fold"),
        type=fold_value,
        default=0,
        help="validation fold; 'all' trains every fold (CV score); 'none' trains on every person after CV "
        "(no validation; with --val-ratio R a random R of the persons validates)",
    )
    g.add_argument(*flags("--split-seed"), type=int, default=42, help="seed of the fold/valid split")
    g.add_argument(
        *flags("--val-ratio"), type=float, default=0.0, help="--fold none: share of persons held out to validate"
    )
    g.add_argument(
        *flags("--age-old-threshold"), type=int, default=60, help="age of the >=60 class for TRAINING labels"
    )
    g.add_argument(
        *flags("--drop-ages"),
        type=int,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="leave persons aged LO..HI out of TRAINING (e.g. 57 59); validation keeps them",
    )
    g.add_argument(
        *flags("--pseudo"),
        default=None,
        metavar="CSV",
        help="pseudo-labelled eval images (pseudo_label.py) added to TRAINING only; folds and validation unchanged",
    )
    g.add_argument(*flags("--sampler"), default="none", choices=("none", "weighted"), help="weighted: by 1/class freq")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False, help="decode images once, in RAM")
    g.add_argument(*flags("--label-fixes"), default=None, help="label fixes CSV (None: the repo's label_fixes.csv)")
    g.add_argument(
        *flags("--no-label-fixes"),
        dest="label_fixes",
        action="store_const",
        const="none",
        help="train on the labels as given",
    )
    g.add_argument(*flags("--batch-size"), type=int, default=64, help="training batch size (per process)")
    g.add_argument(*flags("--valid-batch-size"), type=int, default=256, help="validation batch size (per process)")
    g.add_argument(
        *flags("--workers"),
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers (none with --cache)",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument(*flags("--optimizer"), default="adamw", help=f"one of {', '.join(optim.OPTIMIZERS.names())}")
    g.add_argument(*flags("--lr"), type=float, default=3e-4, help="(peak) learning rate")
    g.add_argument(*flags("--weight-decay"), type=float, default=0.01, help="not applied to norms and biases")
    g.add_argument(*flags("--momentum"), type=float, default=0.9, help="sgd/madgrad momentum")
    g.add_argument(*flags("--scheduler"), default="cosine", help=f"one of {', '.join(optim.SCHEDULERS.names())}")
    g.add_argument(*flags("--lr-decay-step"), type=int, default=20, help="step: epochs between decays")
    g.add_argument(*flags("--gamma"), type=float, default=0.5, help="step: decay factor")
    g.add_argument(*flags("--min-lr"), type=float, default=1e-6, help="cosine: final lr; cyclic: base lr")
    g.add_argument(*flags("--cycle-epochs"), type=float, default=2.0, help="cyclic: epochs per up+down cycle")
    g.add_argument(*flags("--epochs"), type=int, default=10, help="training epochs")
    g.add_argument(*flags("--accum-steps"), type=int, default=1, help="gradient accumulation steps")
    g.add_argument(*flags("--clip-grad"), type=float, default=0.0, help="clip gradient norm (0: off)")
    g.add_argument(*flags("--patience"), type=int, default=0, help="stop after N epochs without better F1 (0: off)")
    g.add_argument(*flags("--seed"), type=int, default=42, help="training seed (init, data order, augmentation)")
    g.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=False, help="deterministic kernels (slower)"
    )

    g = parser.add_argument_group("augmentation")
    g.add_argument(
        *flags("--augment"),
        nargs="+",
        default=list(augment.DEFAULT_AUGMENT),
        metavar="NAME",
        help=f"augmentations to run: {', '.join(augment.AUGMENTATIONS.names())} (hflip, jitter and affine run "
        "first, the others after them in the order given), or none; the options of one not listed change nothing",
    )
    for option in augment.augmentation_flags():  # each augmentation's options (augment.register_augmentation)
        pair = isinstance(option.spec.default, tuple)
        g.add_argument(
            *flags(option.flag),
            type=option.spec.parse,
            nargs=2 if pair else None,
            metavar=("LO", "HI") if pair else option.option.upper(),
            default=list(option.spec.default) if pair else option.spec.default,
            help=option.spec.help,
        )
    g.add_argument(*flags("--cutmix"), type=float, default=0.0, help="probability of CutMix per batch")
    g.add_argument(*flags("--cutmix-mode"), default="strip", choices=("strip", "box"), help="full-height strip or box")
    g.add_argument(*flags("--cutmix-beta"), type=float, default=1.0, help="Beta(b, b) of the pasted share")
    g.add_argument(*flags("--mixup"), type=float, default=0.0, help="MixUp alpha for batches not CutMixed (0: off)")

    g = parser.add_argument_group("speed")
    g.add_argument(
        *flags("--amp"),
        nargs="?",
        const="bf16",
        default="auto",
        choices=("off", "auto", "bf16", "fp16"),
        help="mixed precision (auto = bf16 where the hardware computes it natively, CUDA or a CPU with "
        "AVX512-BF16/AMX, else fp32; bare --amp = bf16; fp16 = CUDA with GradScaler; off = fp32); what ran is in "
        "summary.json's amp and the run's first line",
    )
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC memory format")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g.add_argument(*flags("--ema"), type=float, default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    g.add_argument(*flags("--device"), default="auto", help="auto, cpu, cuda or cuda:N")

    g = parser.add_argument_group("output")
    g.add_argument(*flags("--output-dir", "--model-dir"), default="runs", help="parent of the run directories")
    g.add_argument(*flags("--name"), default=None, help="run directory name (None: <model>_<criterion>_fold<k>)")
    g.add_argument(*flags("--log-interval"), type=int, default=20, help="batches between progress-bar updates")
    g.add_argument(*flags("--config"), default=None, help="a run's config.json: its args become the defaults")
    g.add_argument(*flags("--resume"), default=None, help="last.pt (or a run directory) to continue")
    g.add_argument(*flags("--stop-after"), type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return parser
