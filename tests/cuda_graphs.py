"""CUDA-graph capture for the tests that check a step can run captured (imported as `from cuda_graphs
import ...`, this directory on sys.path as for conftest)."""
import torch


def graph_replay(fn, warm=None):
    """The replay of fn recorded in a CUDA graph. warm (default fn) runs three times first on a side
    stream, as torch.cuda.graph asks, so that lazy set-up (cuBLAS handles, autograd's streams,
    the caching allocator's blocks) happens before the capture, not inside it."""
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.Stream()):
        for _ in range(3):
            (warm or fn)()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def drop_grads(layer, x):
    """Sets the .grad of x and of layer's parameters to None."""
    for t in (x, *layer.parameters()):
        t.grad = None


def training_step_replay(layer, x, gy):
    """layer's forward and backward on x with output gradient gy, captured with every .grad None: the
    captured backward creates the gradients in the graph's memory pool and each replay rewrites
    them in place (no accumulation). The warm-up drops the gradients it makes."""

    def warm():
        layer(x).backward(gy)
        drop_grads(layer, x)

    return graph_replay(lambda: layer(x).backward(gy), warm)
