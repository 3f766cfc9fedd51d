"""FX leaves for every tracer, torchvision's ``create_feature_extractor`` included.

timm's FX tracer keeps the modules registered with ``register_notrace_module`` as single ``call_module``
nodes; a plain ``torch.fx.Tracer`` (torchvision's ``create_feature_extractor`` / ``get_graph_node_names``,
``torch.fx.symbolic_trace``) knows nothing of that registry and traces through them, into Python control
flow on shapes (``symbolically traced variables cannot be used as inputs to control flow``).

A module whose forward starts with ``if not torch.jit.is_scripting() and is_fx_proxy(x): return
fx_leaf_call(self, x)`` records itself as one ``call_module`` node under any tracer, exactly as a leaf
would be: the traced graph runs the module's eager forward, so outputs are the eager ones. Eager,
TorchScript, ``torch.jit.trace``, ``torch.compile`` and ``torch.export`` never see a proxy and take the
normal path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["fx_leaf_call", "is_fx_proxy"]


def is_fx_proxy(*args: Any) -> bool:
    """Whether any argument (or an element of a tuple/list argument) is a ``torch.fx.Proxy``."""
    for arg in args:
        if isinstance(arg, torch.fx.Proxy):
            return True
        if isinstance(arg, tuple | list) and is_fx_proxy(*arg):
            return True
    return False


def _tracer_of(args: tuple) -> torch.fx.Tracer:
    for arg in args:
        if isinstance(arg, torch.fx.Proxy):
            return arg.tracer
        if isinstance(arg, tuple | list) and is_fx_proxy(*arg):
            return _tracer_of(tuple(arg))
    raise ValueError("fx_leaf_call needs at least one torch.fx.Proxy argument")


def fx_leaf_call(module: nn.Module, *args: Any) -> Any:
    """Record ``module(*args)`` as one ``call_module`` node of the tracer that made the proxies in ``args``."""
    tracer = _tracer_of(args)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})
