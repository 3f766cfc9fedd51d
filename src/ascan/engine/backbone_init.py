"""Start a dense model's backbone from a classifier's weights (the patent's protocol: ImageNet-pretrained
backbones under UperNet / Cascade Mask R-CNN; here whatever ``ascan train`` produced).

The dense models hold the backbone as timm's ``features_only`` wrapper, which flattens the classifier's
``stages.0`` into ``stages_0``; the classifier's own head has no place there. So the classifier's state is
renamed to the wrapper's keys, its head left out, an input convolution trained on other channels adapted
by timm's ``adapt_input_conv`` (1 grey channel -> 3: the grey weights repeated and scaled, so a grey RGB
image gives the old response), and relative-position tables resized to the wrapper's feature maps. Every
tensor the backbone has must come from the file: a partial fit is an error, never a silent half-init.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from timm.models import adapt_input_conv
from torch import nn

from ascan.engine.state import load_weights_file
from ascan.errors import UserError
from ascan.models.ascan import checkpoint_filter_fn, rename_legacy_key

CONV_WEIGHT_DIMS = 4
IN_CHANNEL_DIM = 1
_FLATTENED_SEQUENTIAL = re.compile(r"^([A-Za-z_]\w*?)\.(\d+)\.")  # "stages.0." -> "stages_0." (timm's FeatureListNet)


@dataclass(frozen=True)
class BackboneInit:
    """What :func:`init_backbone_from` did, for the run's log."""

    loaded: int  # tensors written into the backbone
    unused: tuple[str, ...]  # the file's tensors the backbone has no place for (the classifier's head, ...)
    adapted: tuple[str, ...]  # input convolutions adapted to the backbone's channel count

    def describe(self, source: str) -> str:
        adapted = f", {len(self.adapted)} input conv adapted to the input channels" if self.adapted else ""
        modules = sorted({key.split(".")[0] for key in self.unused})
        unused = f"; {len(self.unused)} of the file's unused: {', '.join(modules)}" if self.unused else ""
        return f"backbone from {source}: {self.loaded} tensors{unused}{adapted}"


def _features_key(key: str, own: dict[str, torch.Tensor]) -> str:
    if key in own:
        return key
    return _FLATTENED_SEQUENTIAL.sub(r"\1_\2.", key, count=1)


def init_backbone_from(backbone: nn.Module, source: str, prefer_ema: bool = True) -> BackboneInit:
    """Load ``source`` (a run folder, checkpoint or ``.safetensors`` of a classifier) into ``backbone``."""
    own = backbone.state_dict()
    state: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in load_weights_file(source, prefer_ema).items():
        target = _features_key(rename_legacy_key(key), own)
        if target in own:
            state[target] = value
        else:
            unused.append(key)
    adapted = []
    for key, value in state.items():
        want = own[key].shape
        if (value.dim() == CONV_WEIGHT_DIMS and value.shape != want
                and value.shape[:IN_CHANNEL_DIM] + value.shape[IN_CHANNEL_DIM + 1:]
                == want[:IN_CHANNEL_DIM] + want[IN_CHANNEL_DIM + 1:]):
            state[key] = adapt_input_conv(want[IN_CHANNEL_DIM], value, base_chans=value.shape[IN_CHANNEL_DIM])
            adapted.append(key)
    state = checkpoint_filter_fn(state, backbone)  # position tables to the backbone's feature-map sizes
    missing = [key for key in own if key not in state]
    if missing:
        raise UserError(f"{source} does not fit the backbone: {len(missing)} of its tensors are not in the file "
                        f"(e.g. {missing[0]}); train the classifier with the same model and kwargs")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise UserError(f"{source} does not fit the backbone: {key} has shape {tuple(value.shape)} in the file "
                            f"but {tuple(own[key].shape)} in the backbone (different widths or layout?)")
    backbone.load_state_dict(state)
    return BackboneInit(len(state), tuple(unused), tuple(adapted))


def start_backbone(backbone: nn.Module, source: str | None, prefer_ema: bool, announce: bool) -> None:
    """A dense task's ``model.init_from``: load ``source`` if set, and say so on the main process."""
    if source:
        done = init_backbone_from(backbone, source, prefer_ema)
        if announce:
            print(done.describe(source), flush=True)


__all__ = ["BackboneInit", "init_backbone_from", "start_backbone"]
