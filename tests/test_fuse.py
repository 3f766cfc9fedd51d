"""BatchNorm folding: a fused model computes what the unfused model computes (eval mode)."""

from __future__ import annotations

import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import ConvNormAct, StdConv2d
from torch import nn

import ascan  # noqa: F401  (registers ascan models)
from ascan.fusion import fuse, fuse_with_summary
from ascan.layers.conv_bn import fold_conv_bn

RELATIVE_TOLERANCE = 1e-5


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding has work to do."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def _num_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _assert_relative_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    error = (actual - expected).abs().max()
    assert error <= RELATIVE_TOLERANCE * scale, f"max error {error:.3g} vs scale {scale:.3g}"


def _bn_reference(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """The textbook eval-mode BatchNorm applied to the conv output, in float64."""
    y = nn.functional.conv2d(
        x.double(),
        conv.weight.double(),
        None if conv.bias is None else conv.bias.double(),
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )
    shape = (1, -1, 1, 1)
    mean, var = bn.running_mean.double().reshape(shape), bn.running_var.double().reshape(shape)
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.double().reshape(shape) + bn.bias.double().reshape(
        shape
    )


@given(
    groups=st.sampled_from([1, 2, 4]),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25, deadline=None)
def test_fold_conv_bn_matches_float64_reference(groups, kernel, stride, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 12, kernel, stride, kernel // 2, groups=groups, bias=bias)
    bn = _randomise_batchnorms(nn.BatchNorm2d(12), seed)
    x = torch.randn(2, 8, 9, 9)
    _assert_relative_close(fold_conv_bn(conv, bn)(x).double(), _bn_reference(conv, bn, x))


def test_sequential_pairs_are_folded_and_the_original_is_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.GELU(),
        nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)),
    )
    _randomise_batchnorms(net)
    x = torch.randn(2, 3, 16, 16)
    expected = net(x)
    fused, summary = fuse_with_summary(net)
    assert summary.bn_folded == 3 and _num_batchnorms(fused) == 0
    assert _num_batchnorms(net) == 3, "inplace=False must leave the input model alone"
    _assert_relative_close(fused(x), expected)
    assert not fused.training


def test_timm_conv_norm_act_keeps_its_activation():
    torch.manual_seed(0)
    block = _randomise_batchnorms(ConvNormAct(4, 6, 3, act_layer=nn.ReLU))
    x = torch.randn(2, 4, 10, 10)
    expected = block(x)
    fused = fuse(block)
    assert _num_batchnorms(fused) == 0
    assert (expected == 0).any(), "the ReLU must be active in this test"
    _assert_relative_close(fused(x), expected)


def test_unsafe_pairs_are_left_alone():
    """Weight-standardised convs, BN subclasses and convs not feeding the BN are not folded."""

    class MyBatchNorm(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(
        StdConv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 1),
        MyBatchNorm(8),
        nn.Conv2d(8, 4, 1),
        nn.ReLU(),
        nn.BatchNorm2d(4),
    )
    _randomise_batchnorms(net)
    x = torch.randn(1, 3, 8, 8)
    expected = net(x)
    fused, summary = fuse_with_summary(net)
    assert summary.bn_folded == 0
    torch.testing.assert_close(fused(x), expected)


def test_fuse_methods_are_called_and_their_result_replaces_the_module():
    class Foldable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = 3.0

        def forward(self, x):
            return x * self.scale

        def fuse(self) -> nn.Module:
            return nn.Identity()

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deployed = False

        def forward(self, x):
            return x

        def reparameterize(self) -> None:
            self.deployed = True

    model = nn.Sequential(Foldable(), nn.Sequential(InPlace()))
    fused, summary = fuse_with_summary(model)
    assert isinstance(fused[0], nn.Identity)
    assert fused[1][0].deployed and not model[1][0].deployed
    assert summary.methods_called == 2


def test_timm_reparameterizable_model_matches_timm_reparameterize_model():
    """FastViT has timm reparameterize() methods: ours must give what timm's own tool gives."""
    torch.manual_seed(0)
    model = _randomise_batchnorms(timm.create_model("fastvit_t8", num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    reference = timm.utils.model.reparameterize_model(model)(x)
    ours = fuse(model)
    _assert_relative_close(ours(x), reference)
    _assert_relative_close(ours(x), model(x))


def _ascan_small_models() -> list[str]:
    return [name for name in ("ascan_nano",) if timm.is_model(name)]


def test_ascan_model_fused_equals_unfused():
    names = _ascan_small_models()
    if not names:
        import pytest

        pytest.skip("no small ascan model registered yet")
    for name in names:
        torch.manual_seed(0)
        model = _randomise_batchnorms(timm.create_model(name))
        size = model.pretrained_cfg["input_size"]
        x = torch.randn(2, *size)
        with torch.no_grad():
            expected = model(x)
            fused, summary = fuse_with_summary(model)
            actual = fused(x)
        assert summary.bn_folded > 0, f"{name}: nothing was folded"
        _assert_relative_close(actual, expected)


@settings(max_examples=12, deadline=None)
@given(stride=st.sampled_from([1, 2]), kernel=st.sampled_from([1, 3]), channels_last=st.booleans(),
       approximate=st.sampled_from(["none", "tanh"]), seed=st.integers(0, 10_000))
def test_conv_act_onednn_path_matches_float64_conv_then_gelu(stride, kernel, channels_last, approximate, seed):
    from ascan.layers.conv_bn import ConvAct

    torch.manual_seed(seed)
    conv = nn.Conv2d(5, 12, kernel, stride, kernel // 2)
    module = ConvAct(conv, nn.GELU(approximate=approximate)).eval()
    x = torch.randn(2, 5, 9, 11)
    if channels_last:
        module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    reference = nn.functional.gelu(
        nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride, kernel // 2),
        approximate=approximate)
    with torch.no_grad():
        assert module._use_onednn(x) == torch.backends.mkldnn.is_available()
        _assert_relative_close(module(x), reference.float())


def test_conv_act_with_autograd_takes_the_differentiable_path():
    from ascan.layers.conv_bn import ConvAct

    module = ConvAct(nn.Conv2d(3, 4, 3, 1, 1), nn.GELU())
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    assert not module._use_onednn(x)
    module(x).sum().backward()
    assert x.grad is not None and module.conv.weight.grad is not None


def test_fused_ascan_model_scripts_and_traces_to_the_same_outputs():
    model = fuse(timm.create_model("ascan_nano"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        _assert_relative_close(torch.jit.script(model)(x), expected)
        _assert_relative_close(torch.jit.trace(model, x)(x), expected)


def test_flop_counter_sees_the_fused_convolutions():
    """The oneDNN conv+GELU kernel is a convolution to torch's FLOP counter: folding changes no MAC count."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 1, 32, 32)
    counts = []
    for model in (timm.create_model("ascan_nano").eval(), fuse(timm.create_model("ascan_nano"))):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0
