"""Meta-device construction and timm's ``reparameterize_model`` on every family (issue 16, items 3 and 5).

* Meta device: ``torch.device("meta")`` (what accelerate's ``init_empty_weights(include_buffers=True)`` and
  smp's encoder probe do), then ``to_empty`` + ``load_state_dict`` must give the normal build's outputs
  exactly. NeoNeXt's non-persistent index buffers are not in the state dict: ``to_empty`` must not leave them
  uninitialised (``MultiNeoCell._apply``), and nothing at build may read a tensor back (``.tolist()``).
* Fusion never grows a model: parameter count after ``reparameterize_model`` <= before (NeoNeXt: strictly
  fewer; its BatchNorm shift used to become a per-patch NeoCell bias, 27.61M -> 27.85M for neonext_tiny), and
  outputs stay within ``REPARAM_ATOL + REPARAM_RTOL * max|output|`` of the unfused model (float32 refolding).
"""

import pytest
import timm
import torch
from timm.models._manipulate import reinit_non_persistent_buffers
from timm.utils.model import reparameterize_model

import ascan  # noqa: F401  (registers the models)
from ascan.layers.neocell import MultiNeoCell

SIZE = 64
FAMILIES = {
    "ascan": ("ascan_nano", {"layout": "CT-C-C-T", "widths": [16, 32, 64, 128], "stem_width": 16,
                             "head_width": 32, "block_kwargs": {"T": {"head_dim": 16}}}),
    "coatnet": ("ascan_coatnet_0", {"layout": "M-M-R-R", "widths": [16, 32, 64, 128], "stem_width": 16,
                                    "block_kwargs": {"R": {"head_dim": 16}}}),
    "neonext": ("neonext_tiny", {"layout": "N1-N2-N1-N1", "widths": [16, 32, 64, 128], "ls_init_value": 1.0}),
}
REPARAM_ATOL, REPARAM_RTOL = 1e-6, 1e-5  # measured: <= 3e-7 relative


def build(family: str, **extra) -> torch.nn.Module:
    name, kwargs = FAMILIES[family]
    return timm.create_model(name, img_size=SIZE, in_chans=3, num_classes=10, **kwargs, **extra)


def randomize_batchnorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sample(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_meta_build_to_empty_and_load_gives_the_same_outputs(family):
    torch.manual_seed(0)
    reference = build(family).eval()
    randomize_batchnorms(reference)
    with torch.device("meta"):
        empty = build(family)
    assert all(p.is_meta for p in empty.parameters())
    model = empty.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(sample()), reference(sample()), rtol=0, atol=0)


def test_neonext_index_buffers_survive_to_empty_and_timm_reinit():
    """The buffers ``load_state_dict`` cannot restore: refilled by ``to_empty`` and by timm's
    ``reinit_non_persistent_buffers`` (its convention for computed buffers)."""
    reference = build("neonext")
    with torch.device("meta"):
        model = build("neonext")
    model.to_empty(device="cpu")
    cells = [(m, r) for m, r in zip(model.modules(), reference.modules(), strict=True) if isinstance(m, MultiNeoCell)]
    assert cells
    for cell, ref in cells:
        for name in ("cell_size", "cell_phase", "channel_index"):
            assert torch.equal(getattr(cell, name), getattr(ref, name)), name
            getattr(cell, name).fill_(-1)
    assert reinit_non_persistent_buffers(model)
    for cell, ref in cells:
        assert torch.equal(cell.cell_phase, ref.cell_phase)


@pytest.mark.parametrize("name", ["neonext_tiny", "ascan_tiny", "ascan_coatnet_0"])
def test_full_size_models_build_on_meta(name):
    """The registered models as timm builds them (no forward): nothing reads a tensor back at build."""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert all(p.is_meta for p in model.parameters())
    assert param_count(model) > 10_000_000


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reparameterize_never_grows_and_keeps_outputs(family):
    torch.manual_seed(0)
    model = build(family).eval()
    randomize_batchnorms(model)
    fused = reparameterize_model(model)  # a copy (inplace=False)
    before, after = param_count(model), param_count(fused)
    assert after <= before
    if family == "neonext":  # its BatchNorms go away and nothing is added
        assert after < before
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.stages.modules())
    x = sample(3)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=REPARAM_ATOL + REPARAM_RTOL * expected.abs().max().item())


def test_reparameterize_neonext_tiny_parameter_count():
    """The issue's figure: neonext_tiny had 27,607,240 parameters and 27,845,176 after --reparam."""
    model = timm.create_model("neonext_tiny").eval()
    before = param_count(model)
    after = param_count(reparameterize_model(model))
    assert before == 27_607_240
    assert after < before
