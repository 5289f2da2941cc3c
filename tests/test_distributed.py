"""INT8 layers under DistributedDataParallel and FSDP2 (fully_shard): 2 processes, gloo, on the CPU.

Two ranks each train a small network of torch_int8.nn.Conv2d and Linear layers (torch_int8.convert)
for a few SGD steps on their half of every global batch, under DDP, under FSDP2 and under FSDP2 with
bf16 parameters (MixedPrecisionPolicy, float32 reduction). One process here trains the same network
on the same global batches as references.

What "the same loss trajectory within the quantization bound" means. Every INT8 product quantizes
its operands per channel along a dimension it does not reduce, with scale s = max|.| / 127 over the
rows it reduces. The forward (X per image or token, W per output channel) and the input gradient
(dY per image or token, W per input channel) have scales of single examples, so a rank computes for
its examples exactly what one process computes for them in the whole batch. The weight gradient
reduces over the batch: dY per output channel and X per input channel, with maxima over the rank's
half rather than over the whole batch, so its rounding differs. Hence two comparisons:

1. Against one process that quantizes each half separately (gradient accumulation over the two
   halves, each loss weighted 1/2): the same products on the same operands, only the reduction
   differs (gloo's sum of two halves, a power-of-two division), so losses and parameters agree to
   float32 rounding (TIGHT). This is the check of the gradient reduction; for bf16 parameters the
   reference runs each half on a bf16 copy and adds the gradients in float32, as FSDP2 does.
2. Against one process on the global batch, step by step: from the parameters the distributed run
   reached before step t, one SGD step on the whole global batch t. The loss must agree to float32
   rounding (the forward is per example), the parameters after the step within the quantization
   bound. With nearest rounding each quantized element is within s / 2 of its value, so a weight
   gradient computed from operands quantized with scales s_dy, s_x is within
   B = sum over the batch of s_dy/2 |x| + |dy| s_x/2 + s_dy s_x / 4  of the exact product. A rank's
   dY is twice the global one (its loss averages half the examples) and its maxima are over a
   subset, so its scales are at most 2 s_dy and s_x; the average of the two ranks is then also
   within B (the global batch's scales) of the exact gradient, the distributed and the global
   gradients differ by at most 2B, and the parameters after the step by at most lr * 2B (biases: 0,
   their gradients are float sums of the same dY). B comes from the operands of the global step.
   Step by step, because whole trajectories drift apart: each step's difference changes the
   operands of every later step, by an amount no bound written from the quantization step covers.

Neither check could pass a wrong reduction: a run whose ranks never synchronize (one process on the
first half alone) must break both (test_an_unsynchronized_run_breaks_both_checks).
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_int8

WORLD = 2
STEPS = 4
GLOBAL_BATCH = 16
LR = 0.1
TIMEOUT_S = 120  # per worker process, and gloo's collective timeout: a hang fails the test
TIGHT = dict(rtol=1e-5, atol=1e-7)
MODES = {"ddp": torch.float32, "fsdp": torch.float32, "fsdp_bf16": torch.bfloat16}  # mode: parameter dtype
INT8_LAYERS = (torch_int8.nn.Linear, torch_int8.nn.Conv2d)


def make_model() -> nn.Module:
    """Two INT8 convolutions (one strided), two INT8 Linear layers, biases; the same weights each call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    return torch_int8.convert(model)


def global_batches():
    """STEPS global batches of 8x8 images in 4 classes (the same in every process)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g), torch.randint(0, 4, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def halves(x: torch.Tensor, y: torch.Tensor):
    """The ranks' shares of a global batch: rank r takes the r-th half."""
    return list(zip(x.chunk(WORLD), y.chunk(WORLD)))


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).float(), y)


def full_parameters(model: nn.Module):
    """{name: float32 copy}; FSDP2's sharded parameters (DTensor) gathered whole."""
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().clone()
            for name, p in model.named_parameters()}


# --- the reference: one process -------------------------------------------------------------------

def record_operands(model: nn.Module):
    """{name: (layer, {"x": input, "dy": output gradient})} of every INT8 layer, filled by the next
    forward and backward."""
    operands = {}
    for name, layer in model.named_modules():
        if isinstance(layer, INT8_LAYERS):
            operands[name] = (layer, {})
            layer.register_forward_hook(_recorder(operands[name][1]))
    return operands


def _recorder(store: dict):
    def record(layer, inputs, output):
        store["x"] = inputs[0].detach()
        output.register_hook(lambda grad: store.update(dy=grad.detach()))
    return record


def _chunk_backward(model: nn.Module, x, y, weight: float, dtype: torch.dtype) -> float:
    """Backward of weight * loss on one chunk into model's float32 gradients; the forward in dtype on a
    copy of model where dtype is not float32 (FSDP2's param_dtype: parameters cast for the forward, the
    chunk's gradients cast to float32 for the reduction)."""
    compute = model
    if dtype != torch.float32:
        compute = copy.deepcopy(model).to(dtype)
        compute.zero_grad(set_to_none=True)
    loss = loss_of(compute, x.to(dtype), y)
    (loss * weight).backward()
    if compute is not model:
        for p, c in zip(model.parameters(), compute.parameters()):
            p.grad = c.grad.float() if p.grad is None else p.grad + c.grad.float()
    return float(loss.detach())


def train_reference(chunks_of, dtype=torch.float32):
    """One process, SGD: each step the gradients of the chunks chunks_of(x, y) of the global batch,
    each loss weighted 1 / len(chunks). {"loss", "params": one per step (params after it)}."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    run = {"loss": [], "params": []}
    for x, y in global_batches():
        chunks = chunks_of(x, y)
        run["loss"].append(sum(_chunk_backward(model, cx, cy, 1 / len(chunks), dtype) for cx, cy in chunks)
                           / len(chunks))
        opt.step()
        opt.zero_grad(set_to_none=True)
        run["params"].append(full_parameters(model))
    return run


def global_step(params, x, y):
    """One process, one SGD step on the global batch (x, y) from params: (loss, params after the step,
    {name: allowed deviation lr * 2B of a distributed step}, 0 for biases)."""
    model = make_model()
    model.load_state_dict(params)
    operands = record_operands(model)
    loss = loss_of(model, x, y)
    loss.backward()
    allowed = {name: torch.zeros(()) for name in params}
    for name, (layer, store) in operands.items():
        allowed[f"{name}.weight"] = LR * 2 * weight_gradient_bound(layer, store["x"], store["dy"])
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return float(loss.detach()), full_parameters(model), allowed


# --- the distributed runs: one worker process per rank --------------------------------------------

def wrap(model: nn.Module, mode: str) -> nn.Module:
    """model under DDP, or fully_shard on every INT8 layer and the root (bf16 for fsdp_bf16)."""
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=MODES[mode], reduce_dtype=torch.float32)
    for layer in model.modules():
        if isinstance(layer, INT8_LAYERS):
            fully_shard(layer, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def train_distributed(mode: str, rank: int):
    """This rank's training on its halves; the loss is averaged over the ranks."""
    import torch.distributed as dist
    model = make_model()
    net = wrap(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    run = {"loss": [], "params": []}
    for x, y in global_batches():
        loss = loss_of(net, *halves(x, y)[rank])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        run["loss"].append(float(mean_loss) / WORLD)
        run["params"].append(full_parameters(model))
    return run


def worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)  # two processes on the cores the reference uses
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    runs = {mode: train_distributed(mode, rank) for mode in MODES}
    if rank == 0:
        torch.save(runs, out)
    # Every rank past its last collective before any tears down: a rank leaving while another's gloo
    # connection is still open was seen to abort the other at exit (torch 2.14, a loaded 2-core machine).
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env():
    """This environment, with the torch_int8 under test first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(torch_int8.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """{mode: run} from WORLD worker processes (this file run as a script), each bounded by TIMEOUT_S."""
    out = tmp_path_factory.mktemp("distributed") / "runs.pt"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)], env=_worker_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a worker ran past {TIMEOUT_S} s")
    if any(p.returncode for p in procs):
        pytest.fail("a worker failed:\n" + "\n".join(log[-3000:] for log in logs))
    return torch.load(out)


@pytest.fixture(scope="module")
def halves_run():
    return train_reference(halves)


# --- the comparisons ------------------------------------------------------------------------------

def _ones_and_abs(t):
    return torch.ones_like(t), t.abs()


def _weight_gradient(layer: nn.Module, dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float weight gradient of layer for output gradient dy and input x."""
    if isinstance(layer, torch_int8.nn.Linear):
        return dy.reshape(-1, layer.out_features).t() @ x.reshape(-1, layer.in_features)
    return torch.nn.grad.conv2d_weight(x, layer.weight.shape, dy, layer.stride, layer.padding, layer.dilation,
                                       layer.groups)


def _channel_scale(t: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """max|t| / 127 per channel (dim 1 of [N, C, ...], the last of a Linear's [..., C]) over the batch."""
    if isinstance(layer, torch_int8.nn.Linear):
        t = t.reshape(-1, t.shape[-1])
    return t.abs().amax([d for d in range(t.dim()) if d != 1]) / 127


def weight_gradient_bound(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """B, elementwise: sum over the batch of s_dy/2 |x| + |dy| s_x/2 + s_dy s_x/4 (module docstring)."""
    trailing = [1] * (layer.weight.dim() - 2)
    s_dy = _channel_scale(dy, layer).reshape(-1, 1, *trailing)
    s_x = _channel_scale(x, layer).reshape(1, -1, *trailing)
    (ones_dy, abs_dy), (ones_x, abs_x) = _ones_and_abs(dy), _ones_and_abs(x)
    return (s_dy / 2 * _weight_gradient(layer, ones_dy, abs_x) + s_x / 2 * _weight_gradient(layer, abs_dy, ones_x)
            + s_dy * s_x / 4 * _weight_gradient(layer, ones_dy, ones_x))


FLOAT_SLACK = 1e-6  # float32 rounding of what the bound leaves out (sums in another order)


def bound_ratio(run) -> float:
    """The largest (deviation of a step of run from one global step from the same parameters) /
    (allowed deviation) over every parameter element and step: <= 1 within the quantization bound.
    The losses are compared by test_the_loss_is_that_of_the_global_batch."""
    ratios = []
    for t, (params, (x, y)) in enumerate(zip(_parameters_before_each_step(run), global_batches())):
        _, after, allowed = global_step(params, x, y)
        ratios += [float(((run["params"][t][name] - after[name]).abs() / (allowed[name] + FLOAT_SLACK)).max())
                   for name in after]
    return max(ratios)


def _parameters_before_each_step(run):
    return [make_model().state_dict()] + run["params"][:-1]


def global_losses(run):
    """The loss of one process on each global batch at the parameters run had before that step."""
    return [global_step(params, x, y)[0] for params, (x, y) in zip(_parameters_before_each_step(run),
                                                                    global_batches())]


def matches(run, reference) -> bool:
    """Whether losses and every step's parameters agree to float32 rounding (TIGHT)."""
    losses = torch.allclose(torch.tensor(run["loss"]), torch.tensor(reference["loss"]), **TIGHT)
    return losses and all(torch.allclose(p[name], q[name], **TIGHT)
                          for p, q in zip(run["params"], reference["params"]) for name in p)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_matches_one_process_quantizing_each_half(distributed_runs, halves_run, mode):
    assert matches(distributed_runs[mode], halves_run)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_each_step_is_a_global_batch_step_within_the_quantization_bound(distributed_runs, mode):
    assert bound_ratio(distributed_runs[mode]) <= 1


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_the_loss_is_that_of_the_global_batch(distributed_runs, mode):
    run = distributed_runs[mode]
    torch.testing.assert_close(torch.tensor(run["loss"]), torch.tensor(global_losses(run)), **TIGHT)


def test_bf16_parameters_match_one_process_with_bf16_halves(distributed_runs):
    bf16_halves = train_reference(halves, torch.bfloat16)
    assert matches(distributed_runs["fsdp_bf16"], bf16_halves)
    assert not matches(distributed_runs["fsdp_bf16"], distributed_runs["fsdp"])  # bf16 took effect


def test_an_unsynchronized_run_breaks_both_checks(halves_run):
    unsynchronized = train_reference(lambda x, y: halves(x, y)[:1])  # rank 0 without the reduction
    assert not matches(unsynchronized, halves_run)
    assert bound_ratio(unsynchronized) > 1



def _has_demo_data() -> bool:
    from torch_int8 import datasets
    try:
        import sklearn  # noqa: F401 - the demo's fallback data set
    except ImportError:
        return datasets.find_fashion_mnist() is not None
    return True


def test_demo_trains_under_torchrun(tmp_path):
    """python -m torch_int8 demo --distributed, 2 ranks (gloo): one table, one summary, from rank 0."""
    if not _has_demo_data():
        pytest.skip("neither Fashion-MNIST nor scikit-learn's digits are available")
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "torch_int8", "demo", "--distributed", "--device", "cpu", "--epochs", "1",
               "--train-images", "256", "--quiet", "--out", str(out)]
    result = subprocess.run(command, env=_worker_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("int8 PTQ") == 1  # the table, printed by rank 0 alone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == WORLD and set(summary["results"]) == {"fp32", "int8", "int8 PTQ"}


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
