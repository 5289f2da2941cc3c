"""What the layer benchmarks time besides eager calls: a call captured in a CUDA graph and replayed
(GPU time without the host's Python and launch cost), and a layer's training step, eager or graphed."""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Optional

import torch

from .timer import error_result, time_in_turns


def graphed(fn: Callable[[], object], warm: Optional[Callable[[], object]] = None) -> Callable[[], object]:
    """fn captured in a CUDA graph after a warm-up of 3 calls of warm (default: fn) on a side stream:
    replaying it has no host overhead. fn must read and write only tensors that stay alive (static
    addresses) and must not synchronize with the host."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            (warm or fn)()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def capture_graphs(label: str, captures: Dict[str, Callable[[], Callable[[], object]]]):
    """(replays, failures): each capture called (graphed or graphed_training_step, bound to its
    arguments); one that raises gives an error_result in failures instead of a replay."""
    replays, failures = {}, {}
    for name, capture in captures.items():
        try:
            replays[name] = capture()
        except Exception as exc:  # noqa: BLE001 - a failed capture must not stop the whole benchmark
            failures[name] = error_result(f"{label} {name}", exc)
    return replays, failures


def training_step(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of layer on x with output gradient gy, as a call to time; it drops the
    gradients it made, so that no call pays for accumulating into the previous one's."""

    def step():
        layer(x).backward(gy)
        drop_grads(layer, x)

    return step


def drop_grads(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """Sets the .grad of x and of layer's parameters to None."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def graphed_training_step(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], object]:
    """The GPU work of training_step(layer, x, gy) as a CUDA-graph replay: forward and backward are
    captured after a side-stream warm-up of training_step, which leaves every .grad None, so the
    captured backward creates x.grad and the parameters' .grad in the graph's private memory pool
    (PyTorch's whole-network capture) and each replay rewrites them in place: no accumulation, as in
    training_step. x must require grad. Call drop_grads(layer, x) when done replaying."""
    return graphed(lambda: layer(x).backward(gy), warm=training_step(layer, x, gy))


def graph_timings(label: str, layers: Dict[str, torch.nn.Module], x: torch.Tensor, gy: torch.Tensor,
                  args) -> Dict[str, dict]:
    """"{side}_fwd_graph" and "{side}_fwd_bwd_graph" for each (side, layer) of layers: the forward
    (under no_grad) and the training step (graphed_training_step) captured in CUDA graphs, then
    timed in turns as replays on the same x and gy. A capture or replay that raises gives {"ms":
    None, "error": ...} (printed to stderr) and the benchmark goes on."""
    replays, failures = {}, {}
    for side, layer in layers.items():
        with torch.no_grad():
            r, f = capture_graphs(label, {f"{side}_fwd_graph": partial(graphed, partial(layer, x))})
        replays.update(r)
        failures.update(f)
        r, f = capture_graphs(label, {f"{side}_fwd_bwd_graph": partial(graphed_training_step, layer, x, gy)})
        replays.update(r)
        failures.update(f)
        drop_grads(layer, x)  # the captured step's gradients (graph memory), or a failed capture's
    timed = time_in_turns(f"{label} CUDA graph", replays, args)
    return {f"{side}_{method}": failures.get(f"{side}_{method}") or timed[f"{side}_{method}"]
            for side in layers for method in ("fwd_graph", "fwd_bwd_graph")}
