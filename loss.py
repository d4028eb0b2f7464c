"""python loss.py

The registered losses (maskcls/losses.py): lists every name train.py's --criterion accepts, with its options
and their defaults. Adding a loss is one decorated builder in maskcls/losses.py.
"""

from __future__ import annotations

import argparse

from maskcls import losses
from maskcls.cli import HelpFormatter
from maskcls.utils import run_main


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)


def main(args: argparse.Namespace) -> int:
    for name in losses.CRITERIA.names():
        options = ", ".join(f"{k}={v}" for k, v in losses.criterion_options(name).items()) or "no options"
        print(f"{name:16s} {options}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
