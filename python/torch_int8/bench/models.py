"""``bench models``: whole models (torchvision ResNets, timm's ViT-B, a Llama-style block), bf16
autocast against the same model converted to INT8.

    python -m torch_int8.bench models [--models resnet18,resnet50,cifar_resnet18,vit_base,llama_block]
                                      [--batches 128,256]
                                      [--modes train,infer] [--iters N] [--warmup N] [--no-compile]
                                      [--json FILE] [--plot FILE] [--list] [--profile]

Per model and batch size, one model with float32 parameters in channels_last (the baseline, run
under bf16 autocast) and ``torch_int8.convert`` of a copy of it (the same parameters, run under the
same autocast), each called eagerly and through ``torch.compile`` (static shapes); the four methods
are timed in turns (:mod:`.timer`) on fresh random inputs each call:

* ``train``  forward, cross-entropy, backward, SGD step (momentum 0.9), gradients dropped;
  also the peak memory of one step (torch.cuda.max_memory_allocated, the models' resident
  parameters and optimizer states included; ``resident_bytes`` is what was allocated before it)
* ``infer``  forward in eval mode under no_grad; besides, ``int8_ptq``: torch_int8.quantize_model of
  the eval model in bf16 (static scales calibrated on one random batch, BatchNorm folded, int8
  between consecutive convolutions), the post-training-quantized inference model

For the transformers (vit_base, llama_block) torchao's INT8 mixed-precision training of the same
model (``torchao``, where torchao is installed) is timed beside them, in both modes.

With ``--graphs`` each eager model's step is also captured whole in one CUDA graph (``{side}_graphed``:
fresh random inputs drawn inside the graph, forward, loss, backward, SGD step) and timed as replays:
the GPU time of a step without the host's Python and launches, which eager steps also pay.

Each method's first call (torch.compile's compilation, a graph's capture) is timed apart (``first_call_s``). Without a
GPU the models run in float32 on the CPU, eagerly (a path for tests: ``--models cifar_resnet18
--batches 2 --iters 1``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import torch_int8

from .cifar_resnet import CifarResNet18
from .llama_block import LlamaBlock
from .cli import add_output_args, register
from .graphs import graphed
from .plot import plot_grouped_bars
from .profiling import profile_steps
from .report import failed_methods, finish, fmt, meta, print_meta, ratio, write_json
from .timer import clock, time_in_turns

MODES = ("train", "infer")


def torchvision_resnet(name: str) -> torch.nn.Module:
    """torchvision.models.<name>() with random weights; torchvision is imported only here."""
    try:
        import torchvision
    except ImportError:
        sys.exit(f"torch_int8.bench models: {name} needs torchvision (pip install torchvision); "
                 "cifar_resnet18 runs without it")
    return getattr(torchvision.models, name)(weights=None)


def timm_model(name: str) -> torch.nn.Module:
    """timm.create_model(name) with random weights; timm is imported only here."""
    try:
        import timm
    except ImportError:
        sys.exit(f"torch_int8.bench models: {name} needs timm (pip install timm)")
    return timm.create_model(name, pretrained=False)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[], torch.nn.Module]
    input_shape: Tuple[int, ...]  # of one sample: (3, H, W) images (channels_last), or (tokens, hidden)
    classes: int
    batches: Tuple[int, ...]  # default batch sizes
    about: str
    transformer: bool = False  # all Linear: torchao's INT8 training is compared too


MODELS: Dict[str, ModelSpec] = {
    "resnet18": ModelSpec(partial(torchvision_resnet, "resnet18"), (3, 224, 224), 1000, (128, 256),
                          "torchvision resnet18, ImageNet size"),
    "resnet50": ModelSpec(partial(torchvision_resnet, "resnet50"), (3, 224, 224), 1000, (128, 256),
                          "torchvision resnet50, ImageNet size"),
    "cifar_resnet18": ModelSpec(CifarResNet18, (3, 32, 32), 10, (256,),
                                "ResNet-18 for CIFAR-10: 3x3 stem, no max-pool, BasicBlocks [2,2,2,2]"),
    "vit_base": ModelSpec(partial(timm_model, "vit_base_patch16_224"), (3, 224, 224), 1000, (64,),
                          "timm vit_base_patch16_224", transformer=True),
    "llama_block": ModelSpec(LlamaBlock, (2048, 4096), 1000, (4,),
                             "a Llama-style decoder block (hidden 4096, 32 heads, SwiGLU MLP 11008) and a "
                             "mean-pooled classifier; batch = sequences of 2048 tokens", transformer=True),
    "llama_block_small": ModelSpec(partial(LlamaBlock, 64, 4, 128, 10), (16, 64), 10, (2,),
                                   "the Llama-style block at hidden 64 (a path for tests)", transformer=True),
}


def parse_list(text: str, choices: Optional[Sequence[str]] = None) -> List[str]:
    """'a,b' -> ['a', 'b'], each one of choices when given."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if choices is not None and t not in choices]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices or ['values'])}, "
                                         f"got {text!r}")
    return items


def parse_batches(text: str) -> List[int]:
    try:
        batches = [int(t) for t in parse_list(text)]
    except ValueError:
        batches = []
    if not batches or min(batches) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes such as 128,256, got {text!r}")
    return batches


def _add_models_args(p: argparse.ArgumentParser) -> None:
    add_output_args(p)
    p.add_argument("--models", type=partial(parse_list, choices=list(MODELS)),
                   default=[m for m in MODELS if not m.endswith("_small")],
                   help=f"comma-separated models (default {','.join(MODELS)}; --list describes them)")
    p.add_argument("--batches", type=parse_batches,
                   help="comma-separated batch sizes for every model (default: 128,256 at 224x224, 256 at 32x32)")
    p.add_argument("--modes", type=partial(parse_list, choices=MODES), default=list(MODES),
                   help="train (forward, backward, SGD step) and/or infer (eval, no_grad); default train,infer")
    p.add_argument("--iters", dest="reps", metavar="N", type=int, default=20,
                   help="timed steps per method (median; default 20)")
    p.add_argument("--warmup", metavar="N", type=int, default=3,
                   help="untimed steps per method after its first call (default 3)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each model through torch.compile (default on; skipped on the CPU)")
    p.add_argument("--graphs", action="store_true",
                   help="also time each eager model's whole step (fresh inputs, forward, loss, backward, SGD step) "
                        "captured in one CUDA graph and replayed: the step's GPU time without the host's (GPU)")
    p.add_argument("--list", action="store_true", help="print the models and exit")
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: torch.profiler's top CUDA kernels of each eager method's step "
                        "(the first model, batch and mode given), with its wall and kernel-busy time")


class FirstCallTimed:
    """fn, its first call (torch.compile's compilation, cuDNN's set-up) timed on the host's clock."""

    def __init__(self, fn: Callable[[], object], synchronize: Callable[[], None]):
        self.fn, self.synchronize, self.seconds = fn, synchronize, None

    def __call__(self) -> None:
        if self.seconds is not None:
            self.fn()
            return
        start = time.perf_counter()
        self.fn()
        self.synchronize()
        self.seconds = time.perf_counter() - start


def random_batch(spec: ModelSpec, batch: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fresh random inputs (images channels_last) and labels (one kernel each)."""
    shape = (batch, *spec.input_shape)
    layout = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    x = torch.empty(shape, device=device, memory_format=layout).normal_()
    return x, torch.randint(spec.classes, (batch,), device=device)


def train_step(model: Callable, optimizer: torch.optim.Optimizer, inputs: Callable, autocast: Callable):
    def step():
        x, y = inputs()
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def infer_step(model: Callable, inputs: Callable, autocast: Callable):
    def step():
        x, _ = inputs()
        with torch.no_grad(), autocast():
            model(x)

    return step


def peak_memory(step: Callable[[], None]) -> dict:
    """resident_bytes (allocated before) and peak_mem_bytes (torch.cuda.max_memory_allocated) of one step."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return {"resident_bytes": resident, "peak_mem_bytes": torch.cuda.max_memory_allocated()}


@dataclass
class Setup:
    """How the models run here: the device, the baseline's name, its autocast, whether also compiled."""
    device: torch.device
    baseline: str
    about: str
    autocast: Callable[[], contextlib.AbstractContextManager]
    compile: bool
    graphs: bool = False


def setup_for(args) -> Setup:
    """bf16 autocast on the GPU; float32 on the CPU, where torch.compile (a C++ build per graph) is
    left out as too slow for the test path this is."""
    if torch.cuda.is_available():
        bf16 = partial(torch.autocast, "cuda", dtype=torch.bfloat16)
        return Setup(torch.device("cuda"), "bf16", "bf16 autocast", bf16, args.compile, args.graphs)
    return Setup(torch.device("cpu"), "fp32", "fp32", contextlib.nullcontext, False)


def torchao_version() -> Optional[str]:
    try:
        import torchao
    except ImportError:
        return None
    return torchao.__version__


def torchao_int8_training(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """torchao's INT8 mixed-precision training (every nn.Linear: int8 products in forward and backward,
    dynamic row-wise scales) applied to a copy of model; None where torchao is not installed."""
    try:
        from torchao.prototype.quantized_training import int8_mixed_precision_training
        from torchao.quantization import quantize_
    except ImportError:
        return None
    ours = copy.deepcopy(model)
    quantize_(ours, int8_mixed_precision_training())
    return ours


def model_set(spec: ModelSpec, setup: Setup) -> Dict[str, torch.nn.Module]:
    """{baseline: the float model, "int8": torch_int8.convert of a copy (fused Conv-BN-ReLU steps, int8
    between them), "int8_layers": convert(fuse=False), every layer on its own}, channels_last; for the
    transformers also "torchao" (torchao_int8_training) where torchao is installed."""
    model = spec.build().to(setup.device, memory_format=torch.channels_last)
    models = {setup.baseline: model, "int8": torch_int8.convert(copy.deepcopy(model)),
              "int8_layers": torch_int8.convert(copy.deepcopy(model), fuse=False)}
    torchao = torchao_int8_training(model) if spec.transformer else None
    return models if torchao is None else {**models, "torchao": torchao}


PTQ_SIDE = "int8_ptq"


def ptq_model(model: torch.nn.Module, spec: ModelSpec, setup: Setup) -> Optional[torch.nn.Module]:
    """torch_int8.quantize_model of an eval copy of model in the autocast dtype (bf16; float32 on the
    CPU), calibrated on one random batch of 32; None (with the reason on stderr) where it fails."""
    dtype = torch.bfloat16 if setup.device.type == "cuda" else torch.float32
    float_model = copy.deepcopy(model).to(dtype).eval()
    calibration = random_batch(spec, 32, setup.device)[0].to(dtype)
    try:
        return torch_int8.quantize_model(float_model, [calibration])
    except Exception as exc:  # noqa: BLE001 - a model quantize_model cannot take is reported, not fatal
        print(f"# {PTQ_SIDE}: quantize_model failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def optimizers_of(models: Dict[str, torch.nn.Module]) -> Dict[str, torch.optim.Optimizer]:
    """An SGD optimizer (momentum 0.9) per model, for the training step."""
    return {side: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for side, m in models.items()}


def runners_of(models: Dict[str, torch.nn.Module], compile: bool) -> Dict[str, Tuple[str, Callable]]:
    """{method: (side, model or compiled model)}: each model eager, and through torch.compile when compile."""
    runners = {f"{side}_eager": (side, m) for side, m in models.items()}
    if compile:
        runners.update({f"{side}_compiled": (side, torch.compile(m)) for side, m in models.items()})
    return runners


def set_mode(models: Dict[str, torch.nn.Module], mode: str) -> None:
    for m in models.values():
        m.train(mode == "train")


def profile_model(name: str, batch: int, mode: str, setup: Setup, reps: int) -> int:
    """bench models --profile: each eager method's step through torch.profiler."""
    spec = MODELS[name]
    models = model_set(spec, setup)
    optimizers, runners = optimizers_of(models), runners_of(models, compile=False)
    set_mode(models, mode)
    steps = steps_for(mode, runners, optimizers, partial(random_batch, spec, batch, setup.device), setup)
    return profile_steps(f"{name} N={batch} {mode}", steps, reps)


def bench_model(name: str, batch: int, modes: Sequence[str], setup: Setup, args) -> List[dict]:
    """One row per mode: the baseline and INT8 model, eager and compiled, timed in turns."""
    spec = MODELS[name]
    if setup.compile:  # a fresh compile cache per model: the recompile limit is never reached
        torch._dynamo.reset()
    models = model_set(spec, setup)
    optimizers, runners = optimizers_of(models), runners_of(models, setup.compile)
    quantized = ptq_model(models[setup.baseline], spec, setup) if "infer" in modes else None
    inference_runners = {} if quantized is None else runners_of({PTQ_SIDE: quantized}, setup.compile)
    inputs = partial(random_batch, spec, batch, setup.device)
    rows = []
    for mode in modes:
        set_mode(models, mode)
        mode_runners = runners if mode == "train" else {**runners, **inference_runners}
        timed = time_steps(f"{name} N={batch} {mode}", steps_for(mode, mode_runners, optimizers, inputs, setup), mode,
                           setup, args)
        rows.append(model_row(name, spec, batch, mode, setup, timed))
    return rows


def steps_for(mode: str, runners: Dict[str, Tuple[str, Callable]], optimizers: Dict[str, torch.optim.Optimizer],
              inputs: Callable, setup: Setup) -> Dict[str, FirstCallTimed]:
    """The step of each runner ({method: (side, model or compiled model)}) in mode, its first call timed;
    with setup.graphs also each eager runner's step as CUDA-graph replays ({side}_graphed)."""

    def step(side: str, run: Callable, autocast: Callable) -> Callable[[], None]:
        if mode == "train":
            return train_step(run, optimizers[side], inputs, autocast)
        return infer_step(run, inputs, autocast)

    synchronize = clock(setup.device)[1]
    steps = {method: FirstCallTimed(step(side, run, setup.autocast), synchronize)
             for method, (side, run) in runners.items()}
    if setup.graphs:  # autocast's weight-cast cache off: the casts are remade inside the graph
        uncached = partial(setup.autocast, cache_enabled=False)
        for method, (side, run) in runners.items():
            if method.endswith("_eager"):
                steps[f"{side}_graphed"] = FirstCallTimed(GraphedStep(step(side, run, uncached)), synchronize)
    return steps


class GraphedStep:
    """step captured in a CUDA graph at the first call (graphs.graphed: a side-stream warm-up, then
    the capture), replayed at every call. The step draws its inputs with torch's CUDA generator,
    which graphs replay with fresh random numbers, and a training step leaves every .grad None, so
    the captured backward and SGD step work in the graph's own memory (whole-network capture)."""

    def __init__(self, step: Callable[[], None]):
        self.step, self.replay = step, None

    def __call__(self) -> None:
        if self.replay is None:
            self.replay = graphed(self.step)
        self.replay()


def time_steps(label: str, steps: Dict[str, FirstCallTimed], mode: str, setup: Setup, args) -> Dict[str, dict]:
    """time_in_turns of steps, each result with its first call's seconds and, training on the GPU,
    the memory of one more step; the seconds it all took on stderr."""
    start = time.perf_counter()
    timed = time_in_turns(label, steps, args, setup.device)
    for method, step in steps.items():
        timed[method]["first_call_s"] = step.seconds
        if mode == "train" and timed[method]["error"] is None and setup.device.type == "cuda":
            timed[method].update(peak_memory(step))
    firsts = ", ".join(f"{method} {fmt(step.seconds, 0, 1)}" for method, step in steps.items())
    print(f"[{label}] {time.perf_counter() - start:.0f} s; first calls (compilation), s: {firsts}",
          file=sys.stderr, flush=True)
    return timed


def model_row(name: str, spec: ModelSpec, batch: int, mode: str, setup: Setup, timed: Dict[str, dict]) -> dict:
    """The JSON row of one (model, batch, mode): per method its times, images/s and speed-ups over
    the baseline's eager and compiled step (baseline time / method time; None where one is missing)."""
    eager, compiled = (timed.get(f"{setup.baseline}_{how}", {}).get("ms") for how in ("eager", "compiled"))
    for t in timed.values():
        t["images_per_s"] = ratio(batch * 1e3, t["ms"])
        t["speedup_vs_eager"] = ratio(eager, t["ms"])
        t["speedup_vs_compiled"] = ratio(compiled, t["ms"])
    return {"model": name, "batch": batch, "mode": mode, "input_shape": list(spec.input_shape), "classes": spec.classes,
            "baseline": setup.baseline, "methods": timed}


def format_models_table(rows: Sequence[dict]) -> str:
    """A line per (model, batch, mode, method): ms per step, images/s, speed-ups, peak memory, first call."""
    head = (f"{'model':<17} {'N':>4} {'mode':<5} | {'method':<14} {'ms':>9} {'samples/s':>9} {'x eager':>7} "
            f"{'x comp':>7} | {'peak GiB':>8} {'1st call s':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for method, t in r["methods"].items():
            peak = t.get("peak_mem_bytes")
            lines.append(f"{r['model']:<17} {r['batch']:>4} {r['mode']:<5} | {method:<14} {fmt(t['ms'], 9, 2)} "
                         f"{fmt(t['images_per_s'], 9, 0)} {fmt(t['speedup_vs_eager'], 7, 2)} "
                         f"{fmt(t['speedup_vs_compiled'], 7, 2)} | {fmt(None if peak is None else peak / 2**30, 8, 2)} "
                         f"{fmt(t.get('first_call_s'), 10, 1)}")
    lines.append(f"ms per step (median); x eager / x comp = {rows[0]['baseline']} eager / compiled time over the "
                 "method's (>1: faster); peak GiB: max_memory_allocated of one training step; 1st call: compilation "
                 "included")
    return "\n".join(lines)


def plot_models(rows: Sequence[dict], path: str, title: str) -> bool:
    methods = list(dict.fromkeys(m for r in rows for m in r["methods"]))  # int8_ptq in inference rows only
    return plot_grouped_bars(path, [f"{r['model']} N={r['batch']} {r['mode']}" for r in rows],
                             {m: [r["methods"].get(m, {}).get("speedup_vs_eager") for r in rows] for m in methods},
                             ylabel=f"speed-up over {rows[0]['baseline']} eager", title=title,
                             lines=[(1.0, "--", None)])


def print_models() -> int:
    for name, spec in MODELS.items():
        batches = ",".join(map(str, spec.batches))
        size = "x".join(map(str, spec.input_shape))
        print(f"{name:<15} {size}, {spec.classes} classes, batches {batches}: {spec.about}")
    return 0


@register("models", "whole models (training step, inference): bf16 autocast vs torch_int8.convert, eager and "
                    "torch.compile", _add_models_args)
def run_models(args: argparse.Namespace) -> int:
    if args.list:
        return print_models()
    setup = setup_for(args)
    torch.manual_seed(args.seed)
    if args.profile:
        if setup.device.type != "cuda":
            sys.exit("torch_int8.bench models --profile: needs a GPU")
        name = args.models[0]
        return profile_model(name, (args.batches or MODELS[name].batches)[0], args.modes[0], setup, min(args.reps, 5))
    info = meta(setup.device)
    info.update({"command": "models", "models": args.models, "batches": args.batches, "modes": args.modes,
                 "iters": args.reps, "warmup": args.warmup, "seed": args.seed, "compile": setup.compile,
                 "baseline": setup.about,
                 "cudnn_benchmark": torch.backends.cudnn.benchmark, "graphs": setup.graphs,
                 "layout": "channels_last, float32 parameters, SGD momentum 0.9, fresh random inputs per step",
                 "torchao": torchao_version()})
    print_meta(info)
    if setup.device.type == "cpu":
        print("# no GPU: float32 models on the CPU, eager only (no --graphs)", file=sys.stderr)
    rows = []
    for name in args.models:
        for batch in args.batches or MODELS[name].batches:
            rows += bench_model(name, batch, args.modes, setup, args)
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
            if args.json:  # so far, in case the run is cut short
                write_json(args.json, {"meta": info, "results": rows})
    print(format_models_table(rows))
    title = f"INT8 vs {info['baseline']} models on {info['gpu']}"
    failed = failed_methods(rows, lambda r: f"{r['model']} N={r['batch']} {r['mode']}")
    return finish(args, {"meta": info, "results": rows}, lambda path: plot_models(rows, path, title), failed)
