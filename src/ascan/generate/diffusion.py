"""DDPM with epsilon prediction (Ho et al.), the alternative objective; sampled with deterministic DDIM.

The model sees ``t = step / num_steps`` in [0, 1) so the same networks serve both objectives.
Direction note: in DDPM, larger t is *noisier*, the opposite of the flow convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ascan.generate.conditioning import Conditioning
from ascan.generate.flow import guided

NUM_TRAIN_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02  # DDPM's linear schedule


@dataclass
class DDPM:
    num_steps: int = NUM_TRAIN_STEPS
    # Clip the predicted x0 to the data range at every DDIM step (DDPM's "clip_denoised"): an imperfect
    # epsilon at high noise is divided by sqrt(abar) ~ 0.01 and would otherwise blow up. None: no clipping
    # (latent spaces have no fixed range).
    clip_x0: float | None = 1.0
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        betas = torch.linspace(BETA_START, BETA_END, self.num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    def _abar(self, steps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(like.device)[steps].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def loss(self, model: nn.Module, x1: torch.Tensor, cond: Conditioning,
             generator: torch.Generator | None = None) -> torch.Tensor:
        steps = torch.randint(0, self.num_steps, (x1.shape[0],), generator=generator, device=x1.device)
        eps = torch.randn(x1.shape, generator=generator, device=x1.device)
        abar = self._abar(steps, x1)
        xt = abar.sqrt() * x1 + (1 - abar).sqrt() * eps
        return F.mse_loss(model(xt, steps.float() / self.num_steps, cond), eps)

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: torch.Tensor, cond: Conditioning, *, steps: int = 50,
               method: str = "ddim", guidance_scale: float = 1.0,
               null_cond: Conditioning | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) on ``steps`` evenly spaced training steps."""
        fn = guided(model, cond, guidance_scale, null_cond)
        seq = torch.linspace(self.num_steps - 1, 0, steps).round().long().tolist()
        x = noise
        n = x.shape[0]
        for i, s in enumerate(seq):
            abar = self._abar(torch.full((n,), s), x)
            eps = fn(x, torch.full((n,), s / self.num_steps, device=x.device, dtype=x.dtype))
            x0_pred = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
            if self.clip_x0 is not None:
                x0_pred = x0_pred.clamp(-self.clip_x0, self.clip_x0)
                eps = (x - abar.sqrt() * x0_pred) / (1 - abar).sqrt()  # the noise consistent with the clipped x0
            if i + 1 < len(seq):
                abar_prev = self._abar(torch.full((n,), seq[i + 1]), x)
                x = abar_prev.sqrt() * x0_pred + (1 - abar_prev).sqrt() * eps
            else:
                x = x0_pred
        return x
