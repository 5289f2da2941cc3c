"""Which cuDNN bf16 convolution is the baseline: the channels_last nn.Conv2d of `bench conv` with a bias and
without one (ResNet's convolutions have none), the latter also with torch.backends.cudnn.benchmark = True
(cuDNN times its algorithms once per shape and keeps the fastest); forward and training step at the
`bench conv` shapes, timed in turns (CUDA graphs).

usage: python3 scripts/conv_bf16_baselines.py [--batch N] [--reps R]
"""
import torch

from torch_int8.bench.cli import script_args
from torch_int8.bench.conv import CONV_SHAPES, conv_layer
from torch_int8.bench.graphs import drop_grads, graphed, graphed_training_step
from torch_int8.bench.timer import time_in_turns


def captured(benchmark: bool, capture):
    """capture() (a graph capture, warm-up included) with cudnn.benchmark set as given."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        return capture()
    finally:
        torch.backends.cudnn.benchmark = before


def main() -> None:
    args = script_args(__doc__)
    print(f"{torch.cuda.get_device_name()}, batch {args.batch}: cuDNN bf16 nn.Conv2d (channels_last), ms per call "
          f"(CUDA graphs); bm = cudnn.benchmark")
    methods = ("fwd bias", "fwd", "fwd bm", "step bias", "step", "step bm")
    print(f"{'layer':20s} " + " ".join(f"{m:>9s}" for m in methods))
    for shape in CONV_SHAPES:
        layers = {bias: conv_layer(shape, args.batch, args.seed, bias) for bias in (True, False)}
        fns = {}
        for name, bias, benchmark in (("bias", True, False), ("", False, False), ("bm", False, True)):
            ref, _, x, _, gy = layers[bias]
            with torch.no_grad():
                fns[f"fwd {name}".strip()] = captured(benchmark, lambda: graphed(lambda: ref(x)))
            fns[f"step {name}".strip()] = captured(benchmark, lambda: graphed_training_step(ref, x, gy))
            drop_grads(ref, x)  # (a captured step's gradients live on in its graph's memory)
        t = time_in_turns(shape[0], fns, args)
        print(f"{shape[0]:20s} " + " ".join(f"{t[m]['ms']:9.3f}" for m in methods))


if __name__ == "__main__":
    main()
