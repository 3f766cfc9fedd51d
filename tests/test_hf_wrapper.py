"""transformers' ``TimmWrapper`` round trip of an ascan model (issue 28, item 5), offline, no hub.

``ascan.hf.save_pretrained`` -> ``from_pretrained`` must give the same outputs as the timm model that was saved:
in a process that imported ascan (the plain ``TimmWrapperForImageClassification``), and in a fresh process that
did not (``AutoModelForImageClassification`` with ``trust_remote_code``: the folder's loader imports ascan).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import ascan  # noqa: F401  (registers the models)

pytest.importorskip("transformers", reason="transformers is not installed")

from ascan.hf import LOADER_MODULE, REQUIRES_KEY, save_pretrained  # noqa: E402

KWARGS = {"in_chans": 3, "img_size": 64, "layout": "CT-C-C-T", "widths": [16, 32, 64, 128], "stem_width": 16,
          "head_width": 32, "block_kwargs": {"T": {"head_dim": 16}}}
LABELS = ["cat", "dog", "bird", "fish", "frog"]
FRESH_PROCESS = """
import sys
import numpy as np, torch
from transformers import AutoModelForImageClassification
assert "ascan" not in sys.modules
torch.set_num_threads(1)  # as the test process (conftest): the same reduction order
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "ascan" in sys.modules  # imported by the folder's loader module
with torch.no_grad():
    logits = model(pixel_values=torch.from_numpy(np.load(sys.argv[2]))).logits
np.save(sys.argv[3], logits.numpy())
print(model.config.id2label[1])
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random ascan_nano (5 classes) saved through ascan.hf, the timm model itself, and an input batch."""
    torch.manual_seed(0)
    model = timm.create_model("ascan_nano", num_classes=len(LABELS), **KWARGS).eval()
    folder = tmp_path_factory.mktemp("hf") / "ascan_nano"
    save_pretrained(folder, "ascan_nano", model_args=KWARGS, state_dict=model.state_dict(), label_names=LABELS)
    return folder, model, torch.randn(2, 3, 64, 64)


def test_round_trip_in_a_process_that_imported_ascan(saved):
    from transformers import TimmWrapperForImageClassification

    folder, model, x = saved
    loaded = TimmWrapperForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, model(x))
    assert loaded.config.id2label == dict(enumerate(LABELS))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "ascan_nano" and "import ascan" in config[REQUIRES_KEY]
    assert config["auto_map"]["AutoModelForImageClassification"].startswith(LOADER_MODULE)


def test_round_trip_in_a_fresh_process_without_import_ascan(saved, tmp_path):
    folder, model, x = saved
    np.save(tmp_path / "x.npy", x.numpy())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(ascan.__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(tmp_path / "x.npy"),
                             str(tmp_path / "logits.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "dog"
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), model(x).numpy(), rtol=1e-5, atol=1e-8)


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="architecture"):
        save_pretrained(tmp_path / "x", "not_a_model")
