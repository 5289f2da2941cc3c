"""The command line of ``python -m torch_int8.bench``: a registry of subcommands (each module of
COMMAND_MODULES registers its own with :func:`register`), the options they share, the parsers of
shape arguments, and those of the scripts/ that time paths side by side."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

# The modules that register a subcommand, in the order of the help text.
COMMAND_MODULES = ("gemm", "linear", "quantize", "backends", "conv", "models")

Shape = Tuple[int, int, int]  # (M, N, K)


@dataclass
class Command:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: Dict[str, Command] = {}


def register(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> exit code`` as subcommand ``name``."""

    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, add_args, run)
        return run

    return deco


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write meta data and results as JSON to FILE")
    p.add_argument("--plot", metavar="FILE", help="write a PNG chart (needs matplotlib) to FILE")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random data (default 0)")


def add_common_args(p: argparse.ArgumentParser) -> None:
    add_output_args(p)
    p.add_argument("--reps", type=int, default=50, help="timed repetitions per method (median; default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per method (default 10)")


def parse_sizes(text: str, form: str) -> Tuple[int, ...]:
    """Positive sizes written as `form` ('MxNxK', 'RxC'; commas also separate) -> a tuple of ints."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != len(form.split("x")):
        raise argparse.ArgumentTypeError(f"shape must be {form}, got {text!r}")
    if min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return sizes


def parse_shape(text: str) -> Shape:
    """'MxNxK' (or 'M,N,K') -> (M, N, K)."""
    return parse_sizes(text, "MxNxK")


def script_args(doc: Optional[str]) -> argparse.Namespace:
    """The options of the scripts/ that time paths side by side at CONV_SHAPES (--batch, --reps,
    --warmup, --seed: the arguments time_in_turns reads), with torch's generator seeded."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torch_int8.bench", description="torch_int8 benchmarks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:  # each registers its command when first imported
        importlib.import_module(f"{__package__}.{name}")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)
