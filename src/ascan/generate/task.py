"""Generation as an engine task: the training step is the objective's loss, the evaluation a validation loss.

Batches are ``(x [B, C, H, W], cond_ids [B])`` (:meth:`GenerationData.dataset`). Each step drops a
fraction of the conditions to the null id (classifier-free guidance learns the unconditional model
too), draws noise and times from the global random stream (which the engine seeds and checkpoints, so
a resumed run draws what an uninterrupted one would), and returns the flow-matching or DDPM loss.

The evaluation is the same loss on held-out images with noise and times fixed by a private generator:
the same draw every time, so successive values in ``metrics.csv`` compare the weights, not the luck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ascan.engine import StepOutput, move_to
from ascan.generate.conditioning import Conditioning, drop_to_null
from ascan.generate.data import GenerationData
from ascan.generate.diffusion import DDPM
from ascan.generate.flow import FlowMatching
from ascan.generate.text import TextTable

EVAL_SEED = 1234  # the validation draw (noise, times); fixed so evaluations compare like with like
EVAL_BATCH = 128


@dataclass
class GenerationTask:
    """The engine's task for a generator (:class:`ascan.engine.Task`): objective loss, validation loss."""

    objective: FlowMatching | DDPM
    null_id: int  # the null class or the empty prompt's row
    cond_drop: float
    text_table: TextTable | None = None
    eval_data: GenerationData | None = None
    _tables: dict[str, TextTable] = field(default_factory=dict, init=False, repr=False)  # per device

    def conditioning(self, ids: torch.Tensor) -> Conditioning:
        """Class ids as labels, or caption ids looked up in the text table (on the ids' device)."""
        if self.text_table is None:
            return Conditioning(labels=ids)
        key = str(ids.device)
        if key not in self._tables:
            self._tables[key] = self.text_table.to(ids.device)
        return self._tables[key].lookup(ids)

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        x, ids = move_to(batch, device)
        ids = drop_to_null(ids, self.null_id, self.cond_drop)
        loss = self.objective.loss(model, x, self.conditioning(ids))
        return StepOutput(loss, x.shape[0])

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        """The objective's loss on the held-out images (``{}`` without them), one fixed draw."""
        if self.eval_data is None:
            return {}
        generator = torch.Generator(device).manual_seed(EVAL_SEED)
        total, count = 0.0, 0
        for start in range(0, self.eval_data.x.shape[0], EVAL_BATCH):
            x = self.eval_data.x[start:start + EVAL_BATCH].to(device)
            ids = self.eval_data.cond_ids[start:start + EVAL_BATCH].to(device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = self.objective.loss(model, x, self.conditioning(ids), generator=generator)
            total += loss.item() * x.shape[0]
            count += x.shape[0]
        return {"loss": total / count}
