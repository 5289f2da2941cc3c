"""The fused Conv2d -> BatchNorm2d (-> + residual) (-> ReLU) steps (torch_int8.nn.fused) and the graph
pass that finds them (torch_int8.fuse, convert's default).

The fused steps run the same INT8 arithmetic as the per-layer layers (the producer quantizes what
the consumer's Conv2d would quantize, per image, by the same kernel), so a fused model's outputs,
gradients and BatchNorm statistics equal the per-layer converted model's exactly; both are compared
with float64 torch.nn within the bound the int8 quantization steps allow.
"""
import copy

import pytest
import torch

import torch_int8
from torch_int8.fuse import fuse
from torch_int8.nn.fused import Int8Activation, conv_bn_act



class BasicBlock(torch.nn.Module):
    """torchvision's BasicBlock, as written there: one ReLU module used twice, `out += identity`."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(torch.nn.Module):
    """torchvision's Bottleneck (1x1, 3x3, 1x1, the downsample's BatchNorm added to the last one)."""

    def __init__(self, c_in, width, stride=1):
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = torch.nn.Conv2d(c_in, width, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.conv3, self.bn3 = torch.nn.Conv2d(width, c_out, 1, bias=False), torch.nn.BatchNorm2d(c_out)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                              torch.nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def small_resnet():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        BasicBlock(16, 16), BasicBlock(16, 32, 2), Bottleneck(32, 8, 2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def fused_calls(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is conv_bn_act]


def test_convert_fuses_every_chain_and_keeps_the_state_dict():
    model = small_resnet()
    keys = list(model.state_dict())
    fused = torch_int8.convert(model)
    assert isinstance(fused, torch.fx.GraphModule)
    calls = fused_calls(fused)
    # stem + 2 per BasicBlock + 1 downsample + 3 + 1 downsample in the Bottleneck
    assert len(calls) == 1 + 2 + 3 + 4
    # int8 leaves: BasicBlock conv1 -> conv2 (twice), Bottleneck conv1 -> conv2 -> conv3
    assert sum(n.kwargs["emit_int8"] for n in calls) == 4
    assert sum(n.kwargs["residual"] is not None for n in calls) == 3
    assert list(fused.state_dict()) == keys
    for name, p in model.named_parameters():
        assert fused.get_parameter(name) is p


def test_untraceable_or_chainless_models_stay_as_they_are():
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    model = DataDependent()
    assert torch_int8.convert(model) is model
    assert isinstance(model.conv, torch_int8.nn.Conv2d)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert torch_int8.convert(plain) is plain
    assert fuse(plain) == (plain, 0)


def int8_fed_weights(gm):
    """Names of the convolution weights whose input arrives as int8: their gradient is the per-image
    wgrad of that int8 data, where the per-layer path (CPU, small images) quantizes the float input
    per channel, so the two agree within the quantization's error, not bit for bit."""
    calls = fused_calls(gm)
    return {f"{n.args[1].target}.weight" for n in calls if n.args[0] in calls and n.args[0].kwargs["emit_int8"]}


def assert_grads(grads_b, grads_a, approximate=(), exact=None):
    """grads_b equal to grads_a, except for the names in `approximate`: no farther from the float64
    gradients `exact` than 1.5 times grads_a's distance (plus 1%)."""
    for name, g in grads_a.items():
        if g is None:
            assert grads_b[name] is None, name
        elif name in approximate:
            want = exact[name].to(g.dtype)
            assert (grads_b[name] - want).norm() <= 1.5 * (g - want).norm() + 0.01 * want.norm(), name
        else:
            torch.testing.assert_close(grads_b[name], g, rtol=0, atol=0, msg=name)


def run_step(model, x, labels):
    model.zero_grad(set_to_none=True)
    x = x.clone().to(next(model.parameters()).dtype).requires_grad_()
    out = model(x)
    torch.nn.functional.cross_entropy(out.float(), labels).backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def three_models(device):
    """(per-layer converted, fused converted, float64) copies of one small_resnet (seed 0)."""
    torch.manual_seed(0)
    base = small_resnet().to(device)
    return (torch_int8.convert(copy.deepcopy(base), fuse=False), torch_int8.convert(copy.deepcopy(base)),
            copy.deepcopy(base).double())


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def assert_as_near_as_per_layer(step_b, step_a, step_exact):
    """A fused step's (output, dX, gradients) no farther from float64's than 1.5 times the per-layer
    step's distance, plus 1% (outputs) or 2% (gradients) for the two paths' different roundings."""
    (out_a, gx_a, grads_a), (out_b, gx_b, grads_b), (out_exact, gx_exact, grads_exact) = step_a, step_b, step_exact
    assert out_b.dtype == out_a.dtype
    assert relative_error(out_b, out_exact) <= 1.5 * relative_error(out_a, out_exact) + 0.01
    pairs = {**{n: (grads_a[n], grads_b[n], grads_exact[n]) for n in grads_a}, "input": (gx_a, gx_b, gx_exact)}
    for name, (a, b, want) in pairs.items():
        assert relative_error(b, want) <= 1.5 * relative_error(a, want) + 0.02, name


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_training_equals_the_per_layer_path(device, channels_last):
    """Bit for bit on the CPU, where both paths run ATen's BatchNorm kernels. On the GPU nn.BatchNorm2d
    runs cuDNN, the fused steps that hand int8 on their own kernels (NHWC) or ATen's native ones
    (other layouts), each with its own sums and rounding: there within the per-layer path's
    distance to float64 (seen on the H100: outputs 1.2e-7 apart for NCHW input)."""
    bitwise = device == "cpu"
    per_layer, fused, exact = three_models(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(2):  # the second step reads the running statistics the first one wrote
        x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, 10, (4,), device=device)
        step_a, step_b, step_exact = (run_step(m, x, labels) for m in (per_layer, fused, exact))
        if not bitwise:
            assert_as_near_as_per_layer(step_b, step_a, step_exact)
            continue
        torch.testing.assert_close(step_b[0], step_a[0], rtol=0, atol=0)
        torch.testing.assert_close(step_b[1], step_a[1], rtol=0, atol=0)
        assert_grads(step_b[2], step_a[2], int8_fed_weights(fused), step_exact[2])
    for (name, a), b in zip(per_layer.state_dict().items(), fused.state_dict().values()):
        tolerance = 0 if bitwise or not a.is_floating_point() else 1e-5
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance, msg=name)
    per_layer.eval()
    fused.eval()
    with torch.no_grad():
        out_a, out_b = per_layer(x), fused(x)
    if bitwise:
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    else:
        assert relative_error(out_b, out_a) < 0.02


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_training_under_bfloat16_autocast(device, channels_last):
    """A bf16 autocast step (what `bench models` times): the fused model returns autocast's dtype and
    trains as the per-layer one does. Not bit for bit: a fused step quantizes BatchNorm's float32
    output, the per-layer path the bf16-rounded one, so the two lie a bf16 rounding apart per
    activation; both stay within a few percent of the float64 model (the int8 steps' error)."""
    per_layer, fused, exact = three_models(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(8, 3, 16, 16, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (8,), device=device)
    with torch.autocast(device, torch.bfloat16):
        step_a, step_b = run_step(per_layer, x, labels), run_step(fused, x, labels)
    assert step_b[0].dtype == torch.bfloat16
    assert_as_near_as_per_layer(step_b, step_a, run_step(exact, x, labels))
    for (name, a), b in zip(per_layer.state_dict().items(), fused.state_dict().values()):
        if a.is_floating_point():  # the running statistics, from bf16 convolution outputs
            torch.testing.assert_close(b, a, rtol=0.02, atol=0.02, msg=name)


def int8_step_bound(x):
    """One int8 step of a per-image quantization of x: max|x| / 127 per image."""
    return x.abs().amax((1, 2, 3)) / 127


@pytest.mark.parametrize("relu,residual", [(True, False), (False, False), (True, True), (False, True)])
def test_conv_bn_act_against_float64(device, relu, residual):
    """Forward of one step in training mode against float64 torch.nn: the INT8 convolution's error
    (one quantization step of x per image and of w per output channel, summed over the taps) passed
    through BatchNorm's normalization."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False).to(device)
    bn = torch.nn.BatchNorm2d(16).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 8, 10, 10, device=device)
    r = torch.randn(4, 16, 10, 10, device=device) if residual else None
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    y = ref_conv(x.double())
    want = ref_bn(y) + (r.double() if residual else 0)
    want = torch.relu(want) if relu else want
    got = conv_bn_act(x, torch_int8.nn.Conv2d.from_float(conv), bn, relu=relu, residual=r)
    # |error of y| <= sum over taps of |x| * (w step / 2) + |w| * (x step / 2) (+ their product)
    w = conv.weight.double()
    x_step = int8_step_bound(x.double()).reshape(-1, 1, 1, 1)
    w_step = w.abs().amax((1, 2, 3)).reshape(-1, 1, 1, 1) / 127
    ones = torch.ones_like(w)
    bound_y = (torch.nn.functional.conv2d(x.double().abs(), ones, padding=1) * w_step.reshape(1, -1, 1, 1) / 2
               + torch.nn.functional.conv2d(torch.ones_like(x.double()), w.abs(), padding=1) * x_step / 2
               + torch.nn.functional.conv2d(torch.ones_like(x.double()), ones, padding=1)
               * x_step * w_step.reshape(1, -1, 1, 1) / 4)
    var = y.var((0, 2, 3), unbiased=False).reshape(1, -1, 1, 1)
    gain = (bn.weight.double().abs().reshape(1, -1, 1, 1) / (var + bn.eps).sqrt())
    # the mean and variance shift with y's errors too: at most the largest error again, twice over
    bound = gain * (bound_y + 2 * bound_y.amax((0, 2, 3), keepdim=True)) + 1e-5
    assert ((got.double() - want).abs() <= bound).all()
    torch.testing.assert_close(bn.running_mean.double(), ref_bn.running_mean, atol=1e-3, rtol=1e-3)


def test_int8_activation_is_the_per_image_quantization(device):
    torch.manual_seed(2)
    conv = torch_int8.nn.Conv2d(4, 8, 3, padding=1, bias=False).to(device)
    bn = torch.nn.BatchNorm2d(8).to(device)
    x = torch.randn(3, 4, 6, 6, device=device)
    act = conv_bn_act(x, conv, bn, relu=True, emit_int8=True)
    assert isinstance(act, Int8Activation) and act.data.dtype == torch.int8 and act.scale.shape == (3,)
    assert act.carrier.stride() == (0, 0, 0, 0) and act.carrier.shape == (3, 8, 6, 6)
    bn.num_batches_tracked.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1)
    z = conv_bn_act(x, conv, bn, relu=True)
    q = torch_int8.quantize(z.detach().float(), 0)
    torch.testing.assert_close(act.data, q.data, rtol=0, atol=0)
    torch.testing.assert_close(act.scale, q.scale, rtol=0, atol=0)
    with pytest.raises(ValueError, match="emit_int8 needs residual=None"):
        conv_bn_act(x, conv, bn, relu=True, residual=z, emit_int8=True)


def test_fused_model_on_empty_batch_and_meta(device):
    fused = torch_int8.convert(small_resnet().to(device))
    out = fused(torch.randn(0, 3, 16, 16, device=device))
    assert out.shape == (0, 10)
    meta = torch_int8.convert(small_resnet().to("meta"))
    assert meta(torch.randn(2, 3, 16, 16, device="meta")).shape == (2, 10)


def test_requires_grad_subsets():
    """Frozen BatchNorm parameters or convolution weights: the rest still trains, exactly as per layer."""
    torch.manual_seed(3)
    base = small_resnet()
    for p in base[1].parameters():
        p.requires_grad_(False)
    base[3].conv1.weight.requires_grad_(False)
    per_layer = torch_int8.convert(copy.deepcopy(base), fuse=False)
    fused = torch_int8.convert(copy.deepcopy(base))
    x, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    _, _, grads_a = run_step(per_layer, x, labels)
    _, _, grads_b = run_step(fused, x, labels)
    assert_grads(grads_b, grads_a, int8_fed_weights(fused), run_step(base.double(), x, labels)[2])


def without_affine(model):
    """model with every BatchNorm2d replaced by a fresh affine=False one (weight and bias None)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, child_name, torch.nn.BatchNorm2d(child.num_features, affine=False))
    return model


@pytest.mark.parametrize("case", ["eval", "no_affine"])
def test_backward_of_the_other_batch_norm_modes(device, case):
    """The backward's other branches, as exactly as per layer: BatchNorm in eval mode (fine-tuning
    with frozen statistics: the mask and BatchNorm's backward from the running statistics), and
    BatchNorm without weight and bias (the mask from the batch statistics alone)."""
    torch.manual_seed(7)
    base = small_resnet().to(device)
    if case == "no_affine":
        base = without_affine(base).to(device)
    with torch.no_grad():
        base(torch.randn(8, 3, 16, 16, device=device))  # running statistics that are not the defaults
    per_layer = torch_int8.convert(copy.deepcopy(base), fuse=False)
    fused = torch_int8.convert(copy.deepcopy(base))
    exact = copy.deepcopy(base).double()
    if case == "eval":
        for m in (per_layer, fused, exact):
            m.eval()
    x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,), device=device)
    step_a, step_b, step_exact = (run_step(m, x, labels) for m in (per_layer, fused, exact))
    if device != "cpu":  # the GPU's BatchNorm kernels differ (see the per-layer test)
        assert_as_near_as_per_layer(step_b, step_a, step_exact)
        return
    torch.testing.assert_close(step_b[0], step_a[0], rtol=0, atol=0)
    torch.testing.assert_close(step_b[1], step_a[1], rtol=0, atol=0)
    assert_grads(step_b[2], step_a[2], int8_fed_weights(fused), step_exact[2])


@pytest.mark.parametrize("channels", [3, 64, 300])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_norm_relu_quantize_against_float64(device, channels, training, dtype):
    """int8::batch_norm_relu_quantize (the GPU's fused kernels for NHWC input, else the composite)
    against float64: the scales within float32 rounding, q within one step (the statistics differ
    in their last bits, which can move a value across a rounding boundary; a bfloat16 z moves it
    by at most a quarter step), the running statistics updated as torch.nn's."""
    torch.manual_seed(4)
    y = (torch.randn(3, channels, 5, 7, device=device) * 2 + 0.5).to(dtype).contiguous(
        memory_format=torch.channels_last)
    weight = torch.rand(channels, device=device) + 0.5
    bias = torch.randn(channels, device=device)
    mean0, var0 = torch.randn(channels, device=device), torch.rand(channels, device=device) + 0.5
    rm, rv = mean0.clone(), var0.clone()
    data, scale, mean, invstd = torch.ops.int8.batch_norm_relu_quantize(y, weight, bias, rm, rv, training, 0.1, 1e-5)
    y64 = y.double()
    if training:
        m, v = y64.mean((0, 2, 3)), y64.var((0, 2, 3), unbiased=False)
        n = y.numel() // channels
        torch.testing.assert_close(rm.double(), 0.9 * mean0.double() + 0.1 * m, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rv.double(), 0.9 * var0.double() + 0.1 * v * n / (n - 1), rtol=1e-5, atol=1e-5)
    else:
        m, v = mean0.double(), var0.double()
        assert torch.equal(rm, mean0) and torch.equal(rv, var0)
    torch.testing.assert_close(mean.double(), m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invstd.double(), (v + 1e-5).rsqrt(), rtol=1e-5, atol=1e-5)
    z = torch.relu((y64 - m.reshape(1, -1, 1, 1)) * (v + 1e-5).rsqrt().reshape(1, -1, 1, 1)
                   * weight.double().reshape(1, -1, 1, 1) + bias.double().reshape(1, -1, 1, 1))
    want_scale = z.amax((1, 2, 3)) / 127
    # the composite rounds z to y's dtype before it quantizes (bfloat16: 2^-8 relative)
    torch.testing.assert_close(scale.double(), want_scale, rtol=1e-5 if dtype == torch.float32 else 2 ** -8, atol=0)
    assert data.dtype == torch.int8 and data.is_contiguous(memory_format=torch.channels_last)
    assert (data.double() - (z / want_scale.reshape(-1, 1, 1, 1)).round()).abs().max() <= 1
    assert data.min() >= 0


def test_batch_norm_relu_quantize_nan_and_errors(device):
    y = torch.randn(2, 4, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    y[1, 2, 0, 0] = float("nan")
    data, scale, mean, invstd = torch.ops.int8.batch_norm_relu_quantize(y, None, None, None, None, True, 0.1, 1e-5)
    # NaN in channel 2 makes its batch statistics NaN, hence every image's largest value: NaN scales
    assert torch.isnan(mean[2]) and torch.isnan(scale).all()
    with pytest.raises(ValueError, match="eval mode needs the running statistics"):
        torch.ops.int8.batch_norm_relu_quantize(y, None, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(ValueError, match="must be 4-D"):
        torch.ops.int8.batch_norm_relu_quantize(y[0], None, None, None, None, True, 0.1, 1e-5)


def batch_norm_relu_backward_float64(grad, y, weight, bias, mean, invstd):
    """The reference: the ReLU's mask from the float64 affine map, torch.nn's BatchNorm backward
    formulas in float64 (batch statistics)."""
    g64, y64 = grad.double(), y.double()
    c = lambda v: v.double().reshape(1, -1, 1, 1)  # noqa: E731
    z = (y64 - c(mean)) * c(invstd) * c(weight) + c(bias)
    g = torch.where(z > 0, g64, 0.0)
    xhat = (y64 - c(mean)) * c(invstd)
    count = y.numel() // y.shape[1]
    sum_g, sum_gx = g.sum((0, 2, 3)), (g * xhat).sum((0, 2, 3))
    grad_y = (g - c(sum_g) / count - xhat * c(sum_gx) / count) * c(invstd) * c(weight)
    return grad_y, sum_gx, sum_g


@pytest.mark.parametrize("channels", [3, 64, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_norm_relu_backward_against_float64(device, channels, dtype, channels_last):
    """int8::batch_norm_relu_backward (the GPU's fused kernels for NHWC input, else the composite)
    against float64, from poisoned outputs: the weight and bias gradients within float32 rounding
    of their sums, grad_y within the rounding of y's dtype (values at a mask boundary, where the
    forward's rounded z decides, are left out: |z| below float32's rounding of the affine map)."""
    torch.manual_seed(5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = (torch.randn(3, channels, 5, 7, device=device) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(y.shape, device=device).to(dtype).contiguous(memory_format=fmt)
    weight, bias = torch.rand(channels, device=device) + 0.5, torch.randn(channels, device=device)
    mean = y.float().mean((0, 2, 3))
    invstd = (y.float().var((0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    grad_y, grad_w, grad_b = torch.ops.int8.batch_norm_relu_backward(grad, y, weight, bias, mean, invstd)
    want_y, want_w, want_b = batch_norm_relu_backward_float64(grad, y, weight, bias, mean, invstd)
    c = lambda v: v.double().reshape(1, -1, 1, 1)  # noqa: E731
    z = (y.double() - c(mean)) * c(invstd) * c(weight) + c(bias)
    clear = (z.abs() > 1e-5).all((0, 2, 3))  # channels with no value at the mask's boundary
    assert clear.float().mean() > 0.9
    assert grad_y.dtype == dtype and grad_y.shape == y.shape
    eps = 1e-5 if dtype == torch.float32 else 2 ** -7
    scale = c(invstd) * c(weight) * grad.double().abs().amax((0, 2, 3), keepdim=True)  # grad_y's magnitude
    assert ((grad_y.double() - want_y).abs() / scale)[:, clear].max() <= eps
    magnitude = (grad.double().abs() * (1 + (y.double() - c(mean)).abs() * c(invstd))).sum((0, 2, 3))
    assert ((grad_w.double() - want_w).abs() / magnitude)[clear].max() <= 1e-5
    assert ((grad_b.double() - want_b).abs() / magnitude)[clear].max() <= 1e-5


def test_batch_norm_relu_backward_nan_and_errors(device):
    y = torch.randn(2, 4, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(y)
    grad[1, 2, 0, 0] = float("nan")
    ones, zeros = torch.ones(4, device=device), torch.zeros(4, device=device)
    mean, invstd = y.mean((0, 2, 3)), (y.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    y[1, 2, 0, 0] = mean[2] + 1  # z > 0 there: the NaN gradient passes the mask
    grad_y, grad_w, grad_b = torch.ops.int8.batch_norm_relu_backward(grad, y, ones, zeros, mean, invstd)
    assert torch.isnan(grad_y[:, 2]).all() and torch.isnan(grad_w[2]) and torch.isnan(grad_b[2])
    assert not torch.isnan(grad_y[:, [0, 1, 3]]).any()
    with pytest.raises(ValueError, match="must be 4-D"):
        torch.ops.int8.batch_norm_relu_backward(grad[0], y[0], ones, zeros, mean, invstd)
    with pytest.raises(ValueError, match="must have y's shape"):
        torch.ops.int8.batch_norm_relu_backward(grad[:1], y, ones, zeros, mean, invstd)
    with pytest.raises(TypeError, match="one dtype"):
        torch.ops.int8.batch_norm_relu_backward(grad.bfloat16(), y, ones, zeros, mean, invstd)
    with pytest.raises(ValueError, match=r"must be \[C\]"):
        torch.ops.int8.batch_norm_relu_backward(grad, y, ones[:3], zeros, mean, invstd)


def test_fused_model_compiles_in_one_graph(device):
    """torch.compile(fullgraph=True) of a fused model (aot_eager: the graph and its autograd as
    compiled code would run them) gives the eager fused model's outputs and gradients bit for bit,
    in training and in eval."""
    torch.manual_seed(6)
    base = small_resnet().to(device)
    eager, compiled = torch_int8.convert(copy.deepcopy(base)), torch_int8.convert(copy.deepcopy(base))
    run = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,), device=device)
    out_a, gx_a, grads_a = run_step(eager, x, labels)
    out_b, gx_b, grads_b = run_step(run, x, labels)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    torch.testing.assert_close(gx_b, gx_a, rtol=0, atol=0)
    assert_grads({n: p.grad for n, p in compiled.named_parameters()}, grads_a)
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(x), eager(x), rtol=0, atol=0)
