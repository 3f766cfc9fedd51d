"""Inference fast paths: fused SDPA in every dtype, no torch.compile graph breaks, fused models."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.profiler import profile

import ascan  # noqa: F401  (registers ascan models)
from ascan import fuse
from ascan.layers.transformer import ParallelTransformerBlock

FUSED_CPU_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"
UNFUSED_SIGNS = ("aten::_softmax", "aten::softmax", "aten::_scaled_dot_product_attention_math")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_transformer_block_attention_stays_on_the_fused_kernel(dtype):
    """The relative-position bias must not push SDPA onto the unfused math path (any autocast dtype)."""
    block = ParallelTransformerBlock(64, 64, feat_size=(6, 6)).eval()
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad(), profile() as prof:
        if dtype is None:
            block(x)
        else:
            with torch.autocast("cpu", dtype=dtype):
                block(x)
    names = {event.name for event in prof.events()}
    assert FUSED_CPU_KERNEL in names
    assert not names & set(UNFUSED_SIGNS), names & set(UNFUSED_SIGNS)


@pytest.mark.parametrize("fused", [False, True])
def test_ascan_nano_has_no_graph_breaks(fused):
    """torch.compile(fullgraph=True) needs a single graph; explain() traces without compiling."""
    model = timm.create_model("ascan_nano").eval()
    if fused:
        model = fuse(model)
    torch._dynamo.reset()
    with torch.no_grad():
        result = torch._dynamo.explain(model)(torch.randn(2, *model.pretrained_cfg["input_size"]))
    assert result.graph_break_count == 0, [reason.reason for reason in result.break_reasons]
    assert result.graph_count == 1
