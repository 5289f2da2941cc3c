"""fuse(): find Conv2d -> BatchNorm2d (-> + residual) (-> ReLU) in a model's graph (torch.fx) and call
torch_int8.nn.fused.conv_bn_act in their place, handing int8 activations from step to step.

The graph keeps the model's own modules (get_attr nodes), so the fused model has the same
parameters, buffers and state_dict keys. A step's output is int8 (Int8Activation) where every user
of it is another fused step's input; else float. Models fx cannot trace stay as they are.
"""
from __future__ import annotations

import copy
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx

from .nn import Conv2d, Linear
from .nn.fused import conv_bn_act

_ADDS = {operator.add, torch.add}
_RELU_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.relu_}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with torch_int8's layers kept whole (leaves) as torch.nn's are."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, (Conv2d, Linear)) or super().is_leaf_module(m, qualname)


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[torch.nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu(gm: fx.GraphModule, node: Optional[fx.Node]) -> bool:
    if node is None:
        return False
    if node.op == "call_module":
        return type(_module(gm, node)) is torch.nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _residual_of(node: Optional[fx.Node], operand: fx.Node) -> Optional[fx.Node]:
    """The other operand of `node` if it is a two-tensor add with `operand` (else None)."""
    if node is None or not ((node.op == "call_function" and node.target in _ADDS and not node.kwargs)
                            or (node.op == "call_method" and node.target in ("add", "add_") and not node.kwargs)):
        return None
    if len(node.args) != 2 or operand not in node.args:
        return None
    other = node.args[1] if node.args[0] is operand else node.args[0]
    return other if isinstance(other, fx.Node) and other is not operand else None


class _Chain:
    """conv -> bn (-> add residual) (-> relu): its nodes and the residual operand."""

    def __init__(self, conv: fx.Node, bn: fx.Node, add: Optional[fx.Node], residual: Optional[fx.Node],
                 relu: Optional[fx.Node]):
        self.conv, self.bn, self.add, self.residual, self.relu = conv, bn, add, residual, relu

    @property
    def last(self) -> fx.Node:
        return self.relu or self.add or self.bn


def _find_chains(gm: fx.GraphModule) -> List[_Chain]:
    """The chains in graph order; an add or ReLU belongs to the first chain that reaches it (ResNet's
    add of a block's last BatchNorm and its downsampling BatchNorm goes to the block's chain)."""
    chains, claimed = [], set()
    for node in gm.graph.nodes:
        conv = _module(gm, node)
        if not isinstance(conv, Conv2d) or len(node.args) != 1 or node.kwargs:
            continue
        bn_node = _only_user(node)
        if bn_node is None or type(_module(gm, bn_node)) is not torch.nn.BatchNorm2d:
            continue
        last = bn_node
        add = _only_user(bn_node)
        residual = _residual_of(add, bn_node) if add not in claimed else None
        if residual is None:
            add = None
        else:
            last = add
        relu = _only_user(last)
        relu = relu if _is_relu(gm, relu) and relu not in claimed else None
        claimed.update((add, relu))
        chains.append(_Chain(node, bn_node, add, residual, relu))
    return chains


def _rewrite(gm: fx.GraphModule, chains: List[_Chain]) -> None:
    graph = gm.graph
    fused = set()  # the conv_bn_act nodes
    replaced: Dict[fx.Node, fx.Node] = {}  # a chain's last node -> its fused call (for later residuals)
    for chain in chains:
        residual = replaced.get(chain.residual, chain.residual)
        with graph.inserting_before(chain.last):
            conv_attr = graph.get_attr(chain.conv.target)
            bn_attr = graph.get_attr(chain.bn.target)
            node = graph.call_function(conv_bn_act, (chain.conv.args[0], conv_attr, bn_attr),
                                       {"relu": chain.relu is not None, "residual": residual,
                                        "emit_int8": False})
        last = chain.last
        last.replace_all_uses_with(node)
        replaced[last] = node
        for dead in (chain.relu, chain.add, chain.bn, chain.conv):
            if dead is not None:
                graph.erase_node(dead)
        fused.add(node)
    # int8 between steps: where every user of a residual-free step takes it as its input x
    for node in fused:
        users = list(node.users)
        if (node.kwargs["residual"] is None and users
                and all(u in fused and u.args[0] is node and node not in u.kwargs.values() for u in users)):
            node.update_kwarg("emit_int8", True)
    graph.lint()
    gm.recompile()


def fuse(model: torch.nn.Module) -> Tuple[torch.nn.Module, int]:
    """(the model with its Conv2d -> BatchNorm2d (-> add) (-> ReLU) chains fused, how many), for a model
    whose Conv2d layers are torch_int8.nn.Conv2d already (convert's first step). A model torch.fx
    cannot trace, or without such chains, comes back as it is (and 0)."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: keep the per-layer path
        return model, 0
    gm = fx.GraphModule(model, graph, model.__class__.__name__)
    chains = _find_chains(gm)
    if not chains:
        return model, 0
    _rewrite(gm, chains)
    gm.train(model.training)
    return gm, len(chains)


def unfuse(model: torch.nn.Module) -> torch.nn.Module:
    """A fused model's graph with every fused step written out again as its modules (conv, bn, add,
    relu): what graph passes that do not know conv_bn_act (post-training quantization) trace.
    Other models come back as they are."""
    if not isinstance(model, fx.GraphModule):
        return model
    calls = [n for n in model.graph.nodes if n.op == "call_function" and n.target is conv_bn_act]
    if not calls:
        return model
    gm = fx.GraphModule(model, copy.deepcopy(model.graph), model.__class__.__name__)
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target is conv_bn_act]:
        x, conv_attr, bn_attr = node.args
        with graph.inserting_before(node):
            out = graph.call_module(bn_attr.target, (graph.call_module(conv_attr.target, (x,)),))
            if node.kwargs["residual"] is not None:
                out = graph.call_function(operator.add, (out, node.kwargs["residual"]))
            if node.kwargs["relu"]:
                out = graph.call_function(torch.relu, (out,))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm
