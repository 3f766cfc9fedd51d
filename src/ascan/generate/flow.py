"""Flow matching (linear interpolant, velocity prediction), ODE samplers and classifier-free guidance.

Convention: ``t = 0`` is pure noise ``x0 ~ N(0, I)``, ``t = 1`` is data ``x1``;
``x_t = (1 - t) x0 + t x1`` and the regression target is the constant velocity ``x1 - x0``.
Sampling integrates ``dx/dt = v(x, t)`` from 0 to 1 (Euler or Heun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ascan.generate.conditioning import Conditioning

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t[B]) -> v


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x1.dim() - 1)))
    return (1 - t) * x0 + t * x1


def sample_time(n: int, mode: str, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times: ``uniform`` or ``logit_normal`` (SD3: more weight on mid-range t)."""
    if mode == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise ValueError(f"time sampling must be 'uniform' or 'logit_normal', got {mode!r}")


@dataclass
class FlowMatching:
    """The flow-matching objective; ``loss`` returns the mean squared velocity error."""

    time_sampling: str = "logit_normal"

    def loss(self, model: nn.Module, x1: torch.Tensor, cond: Conditioning,
             generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = sample_time(x1.shape[0], self.time_sampling, generator, x1.device)
        return self.loss_at(model, x1, x0, t, cond)

    @staticmethod
    def loss_at(model: nn.Module, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        return F.mse_loss(model(interpolate(x0, x1, t), t, cond), x1 - x0)

    def sample(self, model: nn.Module, noise: torch.Tensor, cond: Conditioning, *, steps: int = 50,
               method: str = "heun", guidance_scale: float = 1.0,
               null_cond: Conditioning | None = None) -> torch.Tensor:
        fn = guided(model, cond, guidance_scale, null_cond)
        return integrate_ode(fn, noise, steps=steps, method=method)


def guided(model: nn.Module, cond: Conditioning, scale: float,
           null_cond: Conditioning | None) -> VelocityFn:
    """Classifier-free guidance: ``u + s (c - u)``. Scale 1 calls only the conditional model."""
    if scale == 1.0 or null_cond is None:
        return lambda x, t: model(x, t, cond)
    both = Conditioning.cat([cond, null_cond])

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)

    return fn


@torch.no_grad()
def integrate_ode(velocity: VelocityFn, x: torch.Tensor, *, steps: int, method: str = "euler",
                  t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` on a uniform grid; Heun = explicit trapezoid (2nd order)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"ODE method must be 'euler' or 'heun', got {method!r}")
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    n = x.shape[0]
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = t_next - t
        v = velocity(x, torch.full((n,), t, device=x.device, dtype=x.dtype))
        x_euler = x + h * v
        if method == "euler":
            x = x_euler
        else:
            v_next = velocity(x_euler, torch.full((n,), t_next, device=x.device, dtype=x.dtype))
            x = x + 0.5 * h * (v + v_next)
    return x
