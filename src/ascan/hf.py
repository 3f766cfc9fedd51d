"""ascan models as Hugging Face ``transformers`` ``TimmWrapper`` models, saved so they load again anywhere.

``TimmWrapperConfig`` records a timm ``architecture`` name and ``model_args``; ``from_pretrained`` calls
``timm.create_model(architecture, **model_args)``. ascan's architectures are registered in timm when ``ascan`` is
imported, so a process that has not imported it fails with transformers' message "The model architecture
'ascan_tiny' is not supported in your version of timm ... Please upgrade timm" (timm's own error is
"Unknown model (ascan_tiny)"): upgrading timm does not help; importing ascan does.

:func:`save_pretrained` writes the folder ``save_pretrained`` writes (``config.json``, ``model.safetensors``) plus
what lets it find ascan by itself: a small module, :data:`LOADER_MODULE` ``.py``, whose one job is ``import
ascan`` and which ``config.json``'s ``auto_map`` names for ``AutoModel`` and ``AutoModelForImageClassification``
(transformers' mechanism for code a model needs), and a ``config.json`` key :data:`REQUIRES_KEY` saying so.
Two ways to load it::

    import ascan  # registers the architectures in timm
    from transformers import TimmWrapperForImageClassification
    model = TimmWrapperForImageClassification.from_pretrained(folder)

    from transformers import AutoModelForImageClassification  # no import of ascan in this program
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)

(The second runs the folder's loader module, as ``trust_remote_code`` says: only for folders you trust. ascan
must be installed in both.) Nothing here downloads: the folder is local, ``pretrained=False`` throughout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ascan.atomic import atomic_write_text
from ascan.errors import UserError
from ascan.extras import missing

if TYPE_CHECKING:
    import torch

LOADER_MODULE = "ascan_timm_loader"
CONFIG_FILE = "config.json"
REQUIRES_KEY = "requires"
REQUIRES = "import ascan  (registers ascan's architectures in timm; pip install ascan)"
AUTO_CLASSES = {"AutoModel": "TimmWrapperModel", "AutoModelForImageClassification": "TimmWrapperForImageClassification"}
LOADER_SOURCE = '''"""Registers ascan's architectures in timm (``import ascan``) for transformers' TimmWrapper classes.

config.json's ``auto_map`` names this module, so ``AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)`` imports ascan before timm builds the model. Written by ascan.hf.save_pretrained.
"""

import ascan  # noqa: F401  (the registration)
from transformers import TimmWrapperForImageClassification, TimmWrapperModel

__all__ = ["TimmWrapperForImageClassification", "TimmWrapperModel"]
'''


def save_pretrained(folder: str | Path, architecture: str, *, model_args: dict[str, Any] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None, num_labels: int | None = None,
                    label_names: list[str] | None = None):
    """Save ``architecture`` (a registered ascan model, built with ``model_args``, weights ``state_dict`` of the
    timm model or random) as a ``TimmWrapperForImageClassification`` in ``folder``, loadable with or without
    ``import ascan`` (the module docstring). Returns the wrapper model (eval mode).

    ``num_labels``: the classifier's classes (default: ``len(label_names)``, else the head in ``state_dict``,
    else timm's default 1000); ``label_names`` are stored in the config (transformers' ``id2label``).
    """
    if missing(("transformers",)):  # the 'gen' extra carries it (with a text encoder this needs not)
        raise UserError("needs transformers, not installed: pip install transformers (or 'ascan[gen]')")
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    import ascan  # noqa: F401  (registers the architectures)

    if not timm.is_model(architecture):
        raise ValueError(f"architecture: {architecture!r} is not a registered timm model")
    if num_labels is None and label_names is not None:
        num_labels = len(label_names)
    if num_labels is None and state_dict is not None:
        heads = [v for k, v in state_dict.items() if k.endswith("fc.weight") and v.dim() == 2]
        num_labels = int(heads[-1].shape[0]) if heads else None
    labels = {"id2label": dict(enumerate(label_names))} if label_names is not None else {}
    config = TimmWrapperConfig(architecture=architecture, model_args=dict(model_args or {}),
                               num_labels=num_labels or 1000, **labels)
    config.auto_map = {auto: f"{LOADER_MODULE}.{cls}" for auto, cls in AUTO_CLASSES.items()}
    model = TimmWrapperForImageClassification(config).eval()
    if state_dict is not None:
        model.timm_model.load_state_dict(state_dict)
    folder = Path(folder)
    model.save_pretrained(folder)
    atomic_write_text(folder / f"{LOADER_MODULE}.py", LOADER_SOURCE)
    saved = json.loads((folder / CONFIG_FILE).read_text())
    saved[REQUIRES_KEY] = REQUIRES
    atomic_write_text(folder / CONFIG_FILE, json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return model


__all__ = ["AUTO_CLASSES", "LOADER_MODULE", "REQUIRES", "REQUIRES_KEY", "save_pretrained"]
