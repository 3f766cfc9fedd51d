"""ascan: hybrid convolution-attention vision networks (AsCAN, CoAtNet, NeoNeXt) for timm.

Importing the package registers every model in timm's registry, so
``timm.create_model("ascan_tiny")`` works after ``import ascan``.

One exception keeps ``ascan --help`` fast: when this process *is* the ``ascan`` command line (the ``ascan``
script or ``python -m ascan.cli``), registering (which imports torch and timm, seconds) is left to
:mod:`ascan.cli`, which calls :func:`register_models` before it runs any command; a ``--help`` does without.
The public names below are imported on first use for the same reason.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

CLI_MODULE = "ascan.cli"
CLI_SCRIPT = "ascan"
# Public name -> the module that defines it (imported on first access: each one imports torch).
_LAZY = {"fast_inference": "ascan.fusion", "fuse": "ascan.fusion", "LayoutError": "ascan.layout",
         "check_asymmetric": "ascan.layout", "format_layout": "ascan.layout", "parse_layout": "ascan.layout"}


def register_models() -> None:
    """Register every block letter and model in timm's registry (idempotent: the modules are imported once)."""
    importlib.import_module("ascan.layers")
    importlib.import_module("ascan.models")


def _is_the_command_line() -> bool:
    """Whether this interpreter was started as the ascan CLI (``sys.orig_argv``: the command line as typed)."""
    argv = getattr(sys, "orig_argv", [])
    runs_module = any(arg == f"-m{CLI_MODULE}" or (arg == "-m" and nxt == CLI_MODULE)
                      for arg, nxt in zip(argv, [*argv[1:], ""], strict=True))
    runs_script = len(argv) > 1 and os.path.basename(argv[1]) == CLI_SCRIPT
    return runs_module or runs_script


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ascan' has no attribute {name!r}")


if not _is_the_command_line():
    register_models()

__all__ = ["LayoutError", "check_asymmetric", "fast_inference", "format_layout", "fuse", "parse_layout",
           "register_models", "__version__"]
