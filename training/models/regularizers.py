"""Anti-collapse regularisers on a batch of embeddings z [B, D] (for I-JEPA's context encoder).

* SIGReg (Balestriero & LeCun, "LeJEPA", 2025): the embeddings should be an isotropic Gaussian. By the
  Cramér-Wold theorem it suffices that every 1-D projection is N(0, 1); per step, `num_slices` random unit
  directions are drawn and each projection's empirical characteristic function is compared with exp(-t^2/2)
  (the Epps-Pulley statistic, integrated over t in [0, 3] with a Gaussian window, trapezoid rule, times B).
* VICReg variance + covariance (Bardes et al., ICLR 2022; C-JEPA, NeurIPS 2024, adds it to I-JEPA): a hinge
  keeping each dimension's standard deviation at 1 or above, and a penalty on off-diagonal covariances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REGULARIZERS = ("none", "sigreg", "vicreg")


def sigreg(z: torch.Tensor, gen: torch.Generator | None = None, num_slices: int = 256, knots: int = 17,
           t_max: float = 3.0) -> torch.Tensor:
    """Epps-Pulley distance of z [B, D]'s random 1-D projections from N(0, 1), averaged over slices."""
    z = z.float()
    directions = torch.randn(z.shape[1], num_slices, generator=gen).to(z.device)
    directions = directions / directions.norm(dim=0, keepdim=True)  # [D, S], unit columns
    t = torch.linspace(0.0, t_max, knots, device=z.device)  # [T]
    window = torch.exp(-0.5 * t ** 2)  # the N(0, 1) characteristic function, also the weight
    step = t_max / (knots - 1)
    trapezoid = torch.full((knots,), step, device=z.device)
    trapezoid[[0, -1]] = step / 2
    x = (z @ directions).unsqueeze(-1) * t  # [B, S, T]
    # |ecf(t) - exp(-t^2/2)|^2 with ecf = mean(cos) + i mean(sin); the integrand is symmetric in t, so [0, t_max]
    # twice is the integral over [-t_max, t_max].
    error = (x.cos().mean(0) - window) ** 2 + x.sin().mean(0) ** 2  # [S, T]
    return (error @ (2 * trapezoid * window)).mean() * z.shape[0]


def vicreg(z: torch.Tensor, covariance_weight: float = 0.04) -> torch.Tensor:
    """Variance hinge (std >= 1 per dimension) + covariance_weight x mean squared off-diagonal covariance x D."""
    z = z.float()
    z = z - z.mean(dim=0)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    variance = F.relu(1.0 - std).mean()
    cov = (z.T @ z) / (z.shape[0] - 1)  # [D, D]
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return variance + covariance_weight * off_diagonal.pow(2).sum() / z.shape[1]


def regularizer(name: str, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    if name == "sigreg":
        return sigreg(z, gen)
    if name == "vicreg":
        return vicreg(z)
    raise ValueError(f"unknown regularizer {name!r}: use one of {REGULARIZERS}")
