"""``ascan segment|detect train --nproc-per-node 2``: both dense tasks train through torchrun (gloo on the CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SEGMENT = ["segment", "train", "--set", "data.scenes={image_size: 64, train_scenes: 8, test_scenes: 2, min_scale: 24, "
           "max_scale: 48}", "data.batch_size=4", "optim.epochs=1", "threads=1", "amp=off", "optim.ema_decay=null",
           "model.backbone=ascan_tiny", "model.decoder_channels=8",
           "model.kwargs={layout: C-C-CT-T, widths: [16, 32, 64, 128], stem_width: 16, head_width: 0, "
           "block_kwargs: {T: {head_dim: 16}}}"]
DETECT = ["detect", "train", "--set", "model.arch=cascade_mask_rcnn", "data.image_size=64", "data.batch_size=4",
          "data.eval_batch_size=4", "optim.warmup_steps=1", "optim.epochs=1", "threads=1",
          "data.scenes={train_scenes: 8, test_scenes: 4, min_scale: 16, max_scale: 40, max_garments: 2}",
          "model.backbone_kwargs={widths: [8, 16, 16, 32], stem_width: 8, head_width: 0, img_size: 64, "
          "block_kwargs: {T: {head_dim: 8}, C: {expand_ratio: 1.0}}}",
          "model.detector={fpn_channels: 16, box_head_dim: 32, mask_head_channels: 8, mask_head_convs: 1, "
          "rpn_pre_nms_top_n_train: 200, rpn_post_nms_top_n_train: 50, rpn_pre_nms_top_n_test: 100, "
          "rpn_post_nms_top_n_test: 30, box_batch_size_per_image: 32, anchor_base: 8}"]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [SEGMENT, DETECT], ids=["segment", "detect"])
def test_dense_train_runs_two_processes_through_torchrun(argv, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ascan.cli", argv[0], "train", "--nproc-per-node", "2", "--no-progress",
               *argv[2:], f"data.root={tmp_path / 'scenes'}", f"output={run}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    # 8 training scenes, global batch 4 split over 2 processes: 2 steps of 2 images each
    assert summary["completed"] and summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["steps"] == 2
