"""Which reward drives the advantage: TRL's GRPO advantage split into one additive part per reward.

    from clinical_r1.advantage import advantage_parts, advantage_shares
    parts, adv = advantage_parts(rewards, weights, num_generations=4,
                                 aggregation="sum_then_normalize", scale_rewards="group")
    shares, n_groups = advantage_shares(parts, num_generations=4)

``rewards`` is the ``(completions, reward functions)`` table TRL builds in ``_calculate_rewards`` (groups of
``num_generations`` consecutive rows), ``weights`` its ``reward_weights``. The advantage is computed as TRL
1.15/1.16 computes it (``GRPOTrainer._generate_and_score_completions``), and every step of it is linear once
the scale is fixed, so it splits exactly into per-reward parts (``parts.sum(1) == adv``):

- ``sum_then_normalize`` (the paper): ``A = (R - mean_g R) / s``, ``R = Σ_c w_c r_c``, ``s`` the group std of R
  (``scale_rewards="group"``), the batch std (``"batch"``) plus 1e-4, or 1 (``"none"``); part
  ``P_c = w_c (r_c - mean_g r_c) / s``.
- ``normalize_then_sum`` (GDPO): each reward is standardised in its group, ``z_c = (r_c - mean_g r_c) /
  (std_g r_c + 1e-4)``, then ``A = (Z - mean_batch Z) / (std_batch Z + 1e-4)``, ``Z = Σ_c w_c z_c``; part
  ``P_c = w_c (z_c - mean_batch z_c) / (std_batch Z + 1e-4)``. TRL ignores ``scale_rewards`` here.

A component that does not vary in a group contributes exactly 0 there (TRL's float32 arithmetic can leave
rounding noise of order 1e-3 in a group whose rewards are all equal, divided by the 1e-4 floor; the
decomposition reports 0). Rows that every reward left unscored (``None`` -> NaN) get advantage 0, as in TRL.

The share of component c in a group is ``Cov(P_c, A) / Var(A)`` over the group's completions: the shares sum
to 1, a component that moves with the total gets a positive share, one that pulls against it a negative one.
The step's share is the mean over the groups whose advantage varies. Computed in float64 on the CPU: about
1 ms for a step of 2560 completions (``benchmarks/advantage_share_cost.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-4  # TRL's floor under every standard deviation it divides by
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
SIGNAL = 1e-9  # a group counts when Var(A) exceeds this share of the sum of its parts' variances


def scale_mode(scale_rewards: str | bool) -> str:
    """TRL's ``scale_rewards`` as one of group | batch | none (older configs allowed True/False)."""
    if scale_rewards is True:
        return "group"
    if scale_rewards is False:
        return "none"
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    return scale_rewards


def _std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """TRL's ``nanstd``: NaN-ignoring, Bessel-corrected; NaN where fewer than two values."""
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=keepdim) if dim is not None else torch.nanmean((x - mean) ** 2)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim) if dim is not None else (~torch.isnan(x)).sum()
    return torch.where(n > 1, (var * n / (n - 1).clamp(min=1)).sqrt(), torch.full_like(var, float("nan")))


def varies(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """``(groups, rewards)`` bool: the reward takes at least two different values within the group."""
    g = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1, num_generations, rewards.shape[-1])
    hi = torch.where(torch.isnan(g), -torch.inf, g).amax(1)
    lo = torch.where(torch.isnan(g), torch.inf, g).amin(1)
    return hi > lo


def advantage_parts(rewards: torch.Tensor | Sequence[Sequence[float]], weights: Sequence[float], num_generations: int,
                    aggregation: str = "sum_then_normalize", scale_rewards: str | bool = "group",
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-reward parts ``(N, F)`` of TRL's advantage and the advantage ``(N,)`` they sum to (float64)."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    n, f = r.shape
    if len(w) != f:
        raise ValueError(f"{len(w)} weights for {f} reward columns")
    if n % num_generations:
        raise ValueError(f"{n} completions are not whole groups of {num_generations}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    g = r.reshape(-1, num_generations, f)
    scored = ~torch.isnan(g).all(-1, keepdim=True)  # rows some reward scored; the others get advantage 0
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    if aggregation == "sum_then_normalize":
        x = torch.where(scored, torch.nan_to_num(g, nan=0.0), nan)  # TRL's nansum: a missing reward counts 0
        moving = varies(x.reshape(n, f), num_generations).unsqueeze(1)  # (groups, 1, F)
        dev = torch.where(moving, x - torch.nanmean(x, 1, keepdim=True), torch.zeros_like(x))
        total = (x * w).sum(-1)  # (groups, G), NaN where unscored
        mode = scale_mode(scale_rewards)
        if mode == "group":
            s = _std(total, 1, keepdim=True).unsqueeze(-1) + EPS
        elif mode == "batch":
            s = _std(total.flatten()) + EPS
        else:
            s = torch.ones((), dtype=torch.float64)
        parts = w * dev / s
    else:
        moving = varies(r, num_generations).unsqueeze(1)  # TRL standardises each reward over its scored values
        z = (g - torch.nanmean(g, 1, keepdim=True)) / (_std(g, 1, keepdim=True) + EPS)
        z = torch.where(moving, torch.nan_to_num(z, nan=0.0), torch.zeros_like(z))
        z = torch.where(scored, z, nan)
        total = (z * w).sum(-1)
        parts = w * (z - torch.nanmean(z.reshape(-1, f), 0)) / (_std(total.flatten()) + EPS)
    parts = torch.nan_to_num(torch.where(scored, parts, torch.zeros_like(parts)), nan=0.0).reshape(n, f)
    return parts, parts.sum(-1)


def advantage_shares(parts: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, int]:
    """Mean over groups of ``Cov(P_c, A) / Var(A)`` per component ``(F,)`` (they sum to 1), and the number of
    groups it averages: those whose advantage varies (NaN shares when none does)."""
    p = torch.as_tensor(parts, dtype=torch.float64)
    p = p.reshape(-1, num_generations, p.shape[-1])
    p = p - p.mean(1, keepdim=True)
    a = p.sum(-1)
    var = (a**2).mean(1)
    cov = (p * a.unsqueeze(-1)).mean(1)
    ok = (var > SIGNAL * (p**2).mean(1).sum(-1)) & (var > 0)
    if not ok.any():
        return torch.full((p.shape[-1],), float("nan"), dtype=torch.float64), 0
    return (cov[ok] / var[ok].unsqueeze(-1)).mean(0), int(ok.sum())
