"""Which cuDNN bf16 convolution is the baseline: the `bench conv` layer (nn.Conv2d with bias, channels_last
weight and input) under PyTorch's default algorithm heuristics against the same layer with
torch.backends.cudnn.benchmark = True (cuDNN times its algorithms once per shape and keeps the fastest), and
F.conv2d without bias; forward and training step, at the `bench conv` shapes, timed in turns (CUDA graphs).

usage: python3 scripts/conv_bf16_baselines.py [--batch N] [--reps R]
"""
import argparse

import torch
import torch.nn.functional as F

from torch_int8.bench import CONV_SHAPES, conv_layer, drop_grads, graphed, graphed_training_step, time_in_turns


def captured(benchmark: bool, capture):
    """capture() (a graph capture, warm-up included) with cudnn.benchmark set as given."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        return capture()
    finally:
        torch.backends.cudnn.benchmark = before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, batch {args.batch}: cuDNN bf16, ms per call (CUDA graphs); "
          f"heur = default heuristics, bm = cudnn.benchmark")
    print(f"{'layer':20s} {'fwd heur':>9s} {'fwd bm':>9s} {'F nobias':>9s} {'step heur':>9s} {'step bm':>9s}")
    for shape in CONV_SHAPES:
        ref, _, x, _, gy = conv_layer(shape, args.batch, args.seed)
        stride, pad = shape[6], shape[7]
        w = ref.weight.detach().contiguous()
        with torch.no_grad():
            fns = {"fwd heur": captured(False, lambda: graphed(lambda: ref(x))),
                   "fwd bm": captured(True, lambda: graphed(lambda: ref(x))),
                   "F nobias": captured(False, lambda: graphed(lambda: F.conv2d(x, w, None, stride, pad)))}
        fns["step heur"] = captured(False, lambda: graphed_training_step(ref, x, gy))
        drop_grads(ref, x)  # (the first captured step's gradients live on in its graph's memory)
        fns["step bm"] = captured(True, lambda: graphed_training_step(ref, x, gy))
        t = time_in_turns(shape[0], fns, args)
        print(f"{shape[0]:20s} " + " ".join(f"{t[m]['ms']:9.3f}" for m in fns))
        drop_grads(ref, x)


if __name__ == "__main__":
    main()
