"""Outside exporters on ascan models (issue 16, items 1-3): every graph is checked against eager PyTorch.

* the dynamo ONNX exporter (``torch.onnx.export(dynamo=True)``) with no ascan wrapper (``export_mode``),
  dynamic batch *and* height/width, run in onnxruntime at the export size and at other sizes;
* ``torch.export`` with a dynamic batch (batch 1 and 3) and with a dynamic height/width;
* the TorchScript ("legacy") exporter, timm's default: NeoNeXt at opset 20 (``aten::mT`` had no symbolic),
  fused or not, and the relative-position tables of ascan/CoAtNet with dynamic H/W (a Python "same size, no
  resize" decision used to be frozen by the trace: silently wrong below the export size, a failed Gather above);
* timm's ``onnx_export`` (both exporters).

Small models at 64 px; a height/width is exported as a multiple of 32 (the models downsample 32x).
"""

import io
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.export import Dim

import ascan  # noqa: F401  (registers the models)
from ascan.layers.attention import merge_heads
from ascan.layers.rel_pos import bicubic_resize_matrix, resize_rel_pos_table

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4  # the acceptance bound, fp32 (measured: <= 5e-7 here)
SIZE = 64
NANO = ("ascan_nano", {"layout": "CT-C-C-T", "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 32,
                       "block_kwargs": {"T": {"head_dim": 16}}})
COATNET = ("ascan_coatnet_0", {"layout": "M-M-R-R", "widths": [16, 32, 64, 128], "stem_width": 16,
                               "block_kwargs": {"R": {"head_dim": 16}}})
# layer scale 1 (not 1e-6) so the NeoCell branch shows in the output
NEONEXT = ("neonext_tiny", {"layout": "N1-N1-N1-N1", "widths": [16, 32, 64, 128], "ls_init_value": 1.0})
FAMILIES = {"ascan": NANO, "coatnet": COATNET, "neonext": NEONEXT}
# (batch, side) pairs: the export size, then smaller and larger ones
OTHER_SIZES = [(1, SIZE), (3, SIZE), (1, 96), (2, 128), (1, 160)]


def build(family: str) -> torch.nn.Module:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=SIZE, in_chans=3, num_classes=10, **kwargs)
    calibrate(model)
    with torch.no_grad():  # a head that is not ~0, so errors are measured against a real output scale
        torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    return model.eval()


def calibrate(model: torch.nn.Module) -> None:
    """BatchNorm statistics of one random batch (cumulative average): random-init NeoNeXt's logits are ~1e-6
    with identity BatchNorms; normalised activations make errors comparable across families."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None
        norm.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(inputs(8, SIZE))
    for norm in norms:
        norm.momentum = 0.1


def dynamic_shapes(hw: bool) -> tuple[dict, ...]:
    axes = {0: Dim("batch", min=1, max=64)}
    if hw:
        side = Dim("side", min=2, max=16)
        axes.update({2: 32 * side, 3: 32 * side})
    return (axes,)


def inputs(batch: int, side: int) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch * 1000 + side))


def assert_matches_eager(model: torch.nn.Module, run, sizes) -> list[float]:
    """``run(x)`` (onnxruntime or an exported program) against eager PyTorch; returns the max abs errors."""
    errors = []
    for batch, side in sizes:
        x = inputs(batch, side)
        with torch.no_grad():
            expected = model(x).numpy()
        got = np.asarray(run(x))
        assert got.shape == expected.shape, (batch, side)
        assert np.abs(expected).max() > 1e-2  # a meaningful scale
        errors.append(float(np.abs(got - expected).max()))
        assert errors[-1] <= ATOL, f"batch {batch}, {side}x{side}: max abs error {errors[-1]:.3g}"
    return errors


def ort_runner(onnx_bytes_or_path):
    session = ort.InferenceSession(onnx_bytes_or_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


# --------------------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------------------


def test_merge_heads_same_result_for_either_memory_order():
    """SDPA may return (B, H, N, D) in (B, N, H, D) memory order (fused CPU kernel) or contiguous: same values."""
    x = torch.randn(2, 3, 5, 4)
    as_fused = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (B, N, H, D) memory order
    expected = x.permute(0, 2, 1, 3).reshape(2, 5, 12)
    assert torch.equal(merge_heads(x), expected)
    assert torch.equal(merge_heads(as_fused), expected)


@pytest.mark.parametrize("size_in,size_out", [(13, 13), (13, 7), (13, 19), (11, 1), (5, 23), (1, 3)])
def test_bicubic_resize_matrix_matches_interpolate(size_in, size_out):
    """The traceable table resize equals F.interpolate(bicubic, align_corners=True); the identity exactly."""
    table = torch.randn(3, size_in, 9)
    expected = F.interpolate(table.unsqueeze(0), size=(size_out, 9), mode="bicubic", align_corners=True)[0]
    got = torch.matmul(bicubic_resize_matrix(size_in, size_out), table)
    if size_in == size_out:
        assert torch.equal(got, table)
    torch.testing.assert_close(got, expected, atol=5e-6, rtol=0)


def test_traced_table_resize_follows_the_traced_size():
    """Under torch.jit.trace (the legacy ONNX exporter) the resize is recorded for any size, not frozen."""
    table = torch.randn(2, 13, 13)

    def bias(x: torch.Tensor) -> torch.Tensor:
        return resize_rel_pos_table(table, (x.shape[-2], x.shape[-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the size arithmetic
        traced = torch.jit.trace(bias, (torch.zeros(1, 7, 7),))
    for side in (7, 4, 10):
        torch.testing.assert_close(traced(torch.zeros(1, side, side)), resize_rel_pos_table(table, (side, side)),
                                   atol=5e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# dynamo ONNX exporter: no export_mode, dynamic batch and H/W
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ascan", "coatnet", pytest.param("neonext", marks=pytest.mark.slow)])
def test_dynamo_onnx_dynamic_size_matches_eager_at_every_size(family, tmp_path):
    model = build(family)
    path = tmp_path / f"{family}.onnx"
    with torch.no_grad():
        program = torch.onnx.export(model, (inputs(2, SIZE),), dynamo=True, dynamic_shapes=dynamic_shapes(True),
                                    input_names=["input"], verbose=False)
    program.save(str(path))
    assert_matches_eager(model, ort_runner(str(path)), OTHER_SIZES)


def test_dynamo_onnx_static_size_neonext_matches_eager(tmp_path):
    """NeoNeXt through the dynamo exporter at the export size, dynamic batch only (its fast default case)."""
    model = build("neonext")
    with torch.no_grad():
        program = torch.onnx.export(model, (inputs(2, SIZE),), dynamo=True, dynamic_shapes=dynamic_shapes(False),
                                    input_names=["input"], verbose=False)
    program.save(str(tmp_path / "neonext.onnx"))
    assert_matches_eager(model, ort_runner(str(tmp_path / "neonext.onnx")), [(1, SIZE), (3, SIZE)])


@pytest.mark.parametrize("family", ["ascan", "coatnet"])
def test_timm_onnx_export_dynamo_without_export_mode(family, tmp_path):
    """timm.utils.onnx.onnx_export(use_dynamo=True) -- what timm's onnx_export.py --dynamo calls -- with no
    ascan wrapper; timm compares onnxruntime with PyTorch itself (check_forward), we do again at batch 1 and 3."""
    from timm.utils.onnx import onnx_export

    model = build(family)
    path = str(tmp_path / "timm.onnx")
    onnx_export(model, path, input_size=(3, SIZE, SIZE), batch_size=2, use_dynamo=True, check_forward=True)
    assert_matches_eager(model, ort_runner(path), [(1, SIZE), (3, SIZE)])


def test_dynamo_onnx_fused_model_without_export_mode(tmp_path):
    """The fused model (BatchNorms folded, ascan.fusion.fuse, what ``ascan export --fuse`` exports) failed the
    same way as the unfused one in merge_heads."""
    from ascan.fusion import fuse

    model = fuse(build("ascan"))
    with torch.no_grad():
        program = torch.onnx.export(model, (inputs(2, SIZE),), dynamo=True, dynamic_shapes=dynamic_shapes(False),
                                    input_names=["input"], verbose=False)
    program.save(str(tmp_path / "fused.onnx"))
    assert_matches_eager(model, ort_runner(str(tmp_path / "fused.onnx")), [(1, SIZE), (3, SIZE)])


# --------------------------------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ascan", "coatnet", "neonext"])
def test_torch_export_dynamic_batch(family):
    model = build(family)
    program = torch.export.export(model, (inputs(2, SIZE),), dynamic_shapes=dynamic_shapes(False))
    module = program.module()
    with torch.no_grad():
        assert_matches_eager(model, lambda x: module(x).numpy(), [(1, SIZE), (3, SIZE)])


@pytest.mark.parametrize("family", ["ascan", "coatnet", pytest.param("neonext", marks=pytest.mark.slow)])
def test_torch_export_dynamic_height_width(family):
    model = build(family)
    program = torch.export.export(model, (inputs(2, SIZE),), dynamic_shapes=dynamic_shapes(True))
    module = program.module()
    with torch.no_grad():
        assert_matches_eager(model, lambda x: module(x).numpy(), OTHER_SIZES)


# --------------------------------------------------------------------------------------------------------------
# TorchScript (legacy) ONNX exporter, timm's default
# --------------------------------------------------------------------------------------------------------------


def legacy_onnx(model: torch.nn.Module, opset: int = 20) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings, the exporter's deprecation notice
        torch.onnx.export(model, (inputs(2, SIZE),), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    return buffer.getvalue()


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "reparam"])
def test_legacy_onnx_neonext_opset20(fused):
    from timm.utils.model import reparameterize_model

    model = build("neonext")
    if fused:
        model = reparameterize_model(model)
    assert_matches_eager(model, ort_runner(legacy_onnx(model)), OTHER_SIZES)


@pytest.mark.parametrize("family", ["ascan", "coatnet"])
def test_legacy_onnx_relative_tables_dynamic_size_is_exact(family):
    """Was: max error ~1e-3 of the output at smaller sizes, an out-of-bounds Gather at larger ones."""
    model = build(family)
    assert_matches_eager(model, ort_runner(legacy_onnx(model)), OTHER_SIZES)


def test_timm_onnx_export_legacy_dynamic_size(tmp_path):
    """timm's default exporter with its dynamic_size option (height/width axes) on a CoAtNet."""
    from timm.utils.onnx import onnx_export

    model = build("coatnet")
    path = str(tmp_path / "timm.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export(model, path, input_size=(3, SIZE, SIZE), batch_size=2, dynamic_size=True, opset=20,
                    check_forward=True)
    assert_matches_eager(model, ort_runner(path), OTHER_SIZES)
