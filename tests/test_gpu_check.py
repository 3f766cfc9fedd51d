"""scripts/gpu_check.sh without a GPU: the one-line refusal (exit 2), and its training commands' options and
config keys checked through --print-config (so a renamed option fails here, not on the day a GPU is lent)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
EXIT_NO_GPU = 2


def run_script(tmp_path, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable, ASCAN=f"{sys.executable} -m ascan.cli",
                    GPU_CHECK_WORK=str(tmp_path / "work"), **env)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script runs the whole check")
def test_refuses_in_one_line_without_cuda(tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == EXIT_NO_GPU
    assert result.stdout.splitlines() == [
        f"gpu_check: no CUDA device visible to torch ({sys.executable}); nothing to check on this machine"]
    assert result.stderr == ""
    assert not (tmp_path / "work").exists()  # refused before anything was written


@pytest.mark.slow
def test_training_commands_resolve_their_configs(tmp_path):
    result = run_script(tmp_path, GPU_CHECK_CONFIG_ONLY="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "gpu_check: the training commands' options and config keys are valid"
    logs = tmp_path / "work" / "logs"
    classify = (logs / "CLASSIFY.log").read_text()
    assert "name: ascan_tiny" in classify and "amp: bf16" in classify and "max_steps: 200" in classify
    assert "dataset: imagefolder" in classify and "kwargs: {}" in classify
    for task in ("SEGMENT", "DETECT"):
        text = (logs / f"{task}.log").read_text()
        assert "device: cuda" in text and "max_steps: 20" in text and "train_scenes: 32" in text
