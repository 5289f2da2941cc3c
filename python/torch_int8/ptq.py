"""Post-training quantization: quantize_model() turns a trained float model into INT8 inference layers.

    qmodel = torch_int8.quantize_model(model.eval(), calibration_batches)

torch.fx traces the model and finds Conv2d [-> BatchNorm2d] [-> ReLU / ReLU6] and Linear [-> ReLU]
chains. Each becomes one QuantizedConv2d / QuantizedLinear: BatchNorm folded into the convolution's
weights and bias, the ReLU applied in the GEMM epilogue, weights int8 per output channel, the input
quantized with a static per-tensor scale measured on the calibration batches (absmax or percentile
observer). Where every user of a convolution's output is another quantized convolution, the output
leaves the epilogue as int8 (requantized with a calibrated scale) and goes on without a float
round trip. Everything else (residual additions, pooling, layers quantize_model cannot run) stays
float; `qmodel.quantization_report` says which layers were quantized and why others were not.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.fx
import torch.nn.functional as F

from .conv import scaled_conv2d
from .functional import QTensor
from .fuse import unfuse
from .nn import Conv2d, Linear, QuantizedConv2d, QuantizedLinear
from .nn._common import without_history

OBSERVERS = ("absmax", "percentile")
# Elements of one activation the percentile observer ranks at most (a strided sample beyond it):
# torch.quantile refuses more than 2**24, and ranking every element of a batch would dominate calibration.
_PERCENTILE_SAMPLE = 1 << 20
_RELU_TARGETS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_RELU_MODULES = {torch.nn.ReLU: "relu", torch.nn.ReLU6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}


@dataclass(frozen=True)
class PTQConfig:
    """How quantize_model calibrates and chains.

    observer: "absmax" (the largest |x| seen: nothing saturates) or "percentile" (the `percentile`-th
    percentile of |x| of each batch, averaged over the batches: outliers saturate, the rest gets finer
    steps). int8_chaining: pass int8 tensors between consecutive quantized convolutions. relu_zero_point:
    an int8 ReLU output uses zero point -128 and all 256 levels (True), or zero point 0 and levels
    0..127 (False: a symmetric input, which the GPU's implicit-GEMM convolution takes with padding; an
    input zero point sends a padded convolution to im2col and costs a host sync).
    """

    observer: str = "percentile"
    percentile: float = 99.99
    int8_chaining: bool = True
    relu_zero_point: bool = False

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise ValueError(f"PTQConfig: observer must be one of {OBSERVERS}, got {self.observer!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"PTQConfig: percentile must be in (0, 100], got {self.percentile!r}")


@dataclass
class QuantizationReport:
    """quantized: module name -> what it became; skipped: name of each Conv2d / Linear left float -> why."""
    quantized: Dict[str, str] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{len(self.quantized)} quantized, {len(self.skipped)} left float"]
        lines += [f"  {name}: {what}" for name, what in self.quantized.items()]
        lines += [f"  {name}: float ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


class _SymmetricReluConv2d(QuantizedConv2d):
    """QuantizedConv2d whose ReLU output, when int8, is symmetric: zero point 0, levels 0..127 (the
    epilogue's ReLU clamps below, the int8 saturation above). PTQConfig.relu_zero_point=False."""

    def forward(self, x):
        if self.out_scale is None:
            return super().forward(x)
        x = without_history(x)
        qx = x if isinstance(x, QTensor) else self._quantize_input(x)
        qw = QTensor(self.weight_int8, self.weight_scale, None, 0)
        y = scaled_conv2d(qx, qw, self.bias, self.stride, self.padding, self.dilation, self.groups,
                          out_dtype=torch.int8, out_scale=self.out_scale, relu=True)
        return QTensor(y, torch.full((), float(self.out_scale), dtype=torch.float32, device=y.device), None, None)


@dataclass
class _Chain:
    """A fusable chain of graph nodes: head (Conv2d / Linear call), optional bn, optional act."""
    head: torch.fx.Node
    bn: Optional[torch.fx.Node] = None
    act: Optional[torch.fx.Node] = None
    act_kind: Optional[str] = None  # "relu" or "relu6"
    int8_out: bool = False
    # Calibration of the head's input and (int8 outputs) of the chain's output, set by _calibrate:
    # held here because rewriting a chain replaces nodes that the next chain's input may name.
    input_range: Optional["_Observer"] = None
    output_range: Optional["_Observer"] = None

    @property
    def out(self) -> torch.fx.Node:
        return self.act or self.bn or self.head


class _Observer:
    """Running statistic of |x| at one graph node, and the dtype seen there."""

    def __init__(self, config: PTQConfig):
        self.config, self.values, self.dtype = config, [], None

    def observe(self, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().float()
        if not bool(torch.isfinite(a).all()):
            raise ValueError("quantize_model: a calibration batch produced inf or NaN activations")
        if self.config.observer == "absmax":
            self.values.append(float(a.max()))
        else:
            step = max(1, a.numel() // _PERCENTILE_SAMPLE)
            self.values.append(float(torch.quantile(a[::step], self.config.percentile / 100)))
        self.dtype = x.dtype

    def amax(self) -> float:
        """The calibrated range; a node that was always 0 gets 1 (any scale represents it)."""
        value = max(self.values) if self.config.observer == "absmax" else sum(self.values) / len(self.values)
        return value if value > 0 else 1.0


class _Leaves(torch.fx.Tracer):
    """torch.nn's leaves plus torch_int8's layers (traced into, their autograd Functions would break)."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, (Linear, Conv2d, QuantizedLinear, QuantizedConv2d)) or super().is_leaf_module(m, qualname)


def _trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    model = unfuse(model)  # a convert()ed model's fused steps, as their modules again
    try:
        graph = _Leaves().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...) for code it cannot follow
        raise ValueError(f"quantize_model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
                         "quantize its traceable submodules instead") from e
    return torch.fx.GraphModule(model, graph)


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Optional[torch.nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _act_kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Optional[str]:
    """'relu' / 'relu6' where node applies one to its only input, else None."""
    if node.op == "call_module":
        return _RELU_MODULES.get(type(_module(gm, node)))
    if node.op == "call_function":
        return _RELU_TARGETS.get(node.target)
    if node.op == "call_method":
        return _RELU_METHODS.get(node.target)
    return None


def _only_user(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """node's single user where it takes node as its only positional input."""
    users = list(node.users)
    if len(users) == 1 and len(users[0].args) == 1 and users[0].args[0] is node:
        return users[0]
    return None


def _skip_reason(module: torch.nn.Module, node: torch.fx.Node, calls: int, filter_fn) -> Optional[str]:
    if filter_fn is not None and not filter_fn(module, node.target):
        return "excluded by filter_fn"
    if calls > 1:
        return f"called {calls} times (one quantized layer per call site would need one module each)"
    if len(node.args) != 1 or node.kwargs:
        return "not called with its input as the only argument"
    if isinstance(module, torch.nn.Conv2d) and not Conv2d.supports(module):
        return "padding the INT8 convolution cannot run (padding_mode other than 'zeros' or asymmetric 'same')"
    return None


def _find_chains(gm: torch.fx.GraphModule, filter_fn, report: QuantizationReport) -> List[_Chain]:
    chains = []
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in gm.graph.nodes:
        module = _module(gm, node)
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        reason = _skip_reason(module, node, calls[node.target], filter_fn)
        if reason is not None:
            report.skipped[node.target] = reason
            continue
        chain, nxt = _Chain(node), _only_user(node)
        if isinstance(module, torch.nn.Conv2d) and nxt is not None and type(_module(gm, nxt)) is torch.nn.BatchNorm2d:
            chain.bn, nxt = nxt, _only_user(nxt)
        if nxt is not None and _act_kind(gm, nxt) is not None:
            chain.act, chain.act_kind = nxt, _act_kind(gm, nxt)
        chains.append(chain)
    return chains


def _mark_int8_outputs(chains: List[_Chain], gm: torch.fx.GraphModule) -> None:
    """A convolution chain outputs int8 where every user of its output is a quantized convolution."""
    conv_heads = {c.head for c in chains if isinstance(_module(gm, c.head), torch.nn.Conv2d)}
    for chain in chains:
        users = list(chain.out.users)
        chain.int8_out = (chain.head in conv_heads and bool(users)
                          and all(u in conv_heads and u.args == (chain.out,) and not u.kwargs for u in users))


class _Calibrator(torch.fx.Interpreter):
    """Runs the float graph, feeding every observed node's output to its observer."""

    def __init__(self, gm, observers: Dict[torch.fx.Node, _Observer]):
        super().__init__(gm)
        self.observers = observers

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.observers:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise ValueError(f"quantize_model: the input of {n.name} is not a float tensor during calibration")
            self.observers[n].observe(out)
        return out


def _calibrate(gm, chains: List[_Chain], batches: Iterable, config: PTQConfig) -> None:
    """Fills every chain's input_range and output_range from the batches."""
    watched = {c.head.args[0] for c in chains} | {c.out for c in chains if c.int8_out}
    observers = {n: _Observer(config) for n in watched}
    calibrator, count = _Calibrator(gm, observers), 0
    with torch.no_grad():
        for batch in batches:
            calibrator.run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
            count += 1
    if count == 0:
        raise ValueError("quantize_model: calibration_batches is empty (it needs at least one batch of inputs)")
    for chain in chains:
        chain.input_range, chain.output_range = observers[chain.head.args[0]], observers.get(chain.out)


def _quantized_conv(gm, chain: _Chain, config: PTQConfig) -> torch.nn.Module:
    conv = copy.deepcopy(_module(gm, chain.head)).float()  # weights folded and quantized in float32
    bn = copy.deepcopy(_module(gm, chain.bn)).float() if chain.bn is not None else None
    relu = chain.act is not None
    kwargs = dict(activation_scale=chain.input_range.amax() / 127, relu=relu)
    cls = QuantizedConv2d
    if chain.int8_out:
        amax = chain.output_range.amax()
        if chain.act_kind == "relu6":
            amax = min(amax, 6.0)  # int8 saturation at 6 is the ReLU6
        asymmetric = relu and config.relu_zero_point
        kwargs["out_scale"] = amax / (255 if asymmetric else 127)
        cls = _SymmetricReluConv2d if relu and not asymmetric else QuantizedConv2d
    else:
        kwargs["out_dtype"] = chain.input_range.dtype  # float in, the same float out
    return cls.from_float(conv, bn, **kwargs)


def _describe(gm, chain: _Chain) -> str:
    parts = [type(_module(gm, n)).__name__ if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
             for n in (chain.head, chain.bn, chain.act) if n is not None]
    kind = "QuantizedConv2d" if isinstance(_module(gm, chain.head), torch.nn.Conv2d) else "QuantizedLinear"
    return f"{' + '.join(parts)} -> {kind}, {'int8' if chain.int8_out else 'float'} output"


def _rewrite(gm: torch.fx.GraphModule, chain: _Chain, config: PTQConfig) -> None:
    """The head's module replaced by the quantized layer, bn and act removed from the graph."""
    head_module = _module(gm, chain.head)
    if isinstance(head_module, torch.nn.Conv2d):
        new = _quantized_conv(gm, chain, config)
    else:
        new = QuantizedLinear.from_float(copy.deepcopy(head_module).float(), relu=chain.act is not None,
                                         activation_scale=chain.input_range.amax() / 127)
    parent, _, leaf = chain.head.target.rpartition(".")
    setattr(gm.get_submodule(parent), leaf, new)
    keep_relu6 = chain.act_kind == "relu6" and not chain.int8_out  # float output: the epilogue has no upper clamp
    for node in reversed([n for n in (chain.bn, chain.act) if n is not None and not (n is chain.act and keep_relu6)]):
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)


def quantize_model(model: torch.nn.Module, calibration_batches: Iterable, config: Optional[PTQConfig] = None,
                   filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> torch.fx.GraphModule:
    """An INT8 inference copy of model (which is left as it is): a torch.fx.GraphModule whose Conv2d /
    Linear chains are QuantizedConv2d / QuantizedLinear layers (see the module docstring).

    model: in eval mode (BatchNorm folds its running statistics), traceable by torch.fx; its
    torch_int8.nn training layers count as Conv2d / Linear. calibration_batches: an iterable of model
    inputs (a tensor, or a tuple of positional arguments, per batch) on the model's device and in its
    dtype, e.g. a few hundred training images; float outputs keep the dtype seen in calibration.
    filter_fn(module, name): False leaves that Conv2d / Linear float. The result's
    `quantization_report` (QuantizationReport) lists the quantized and the skipped layers."""
    config = config or PTQConfig()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"quantize_model: model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("quantize_model: call model.eval() first (BatchNorm folds its running statistics, "
                         "and calibration must see inference behaviour)")
    gm = _trace(copy.deepcopy(model))
    report = QuantizationReport()
    chains = _find_chains(gm, filter_fn, report)
    if config.int8_chaining:
        _mark_int8_outputs(chains, gm)
    _calibrate(gm, chains, calibration_batches, config)
    for chain in chains:
        report.quantized[chain.head.target] = _describe(gm, chain)
        _rewrite(gm, chain, config)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.quantization_report = report
    return gm
