"""The teacher's leftover mass outside its top k: the tail's log-partition on a grid of inverse
temperatures, and its value at any temperature in the grid's range.

The offline cache (:mod:`spectrumkd.distillation.teacher_cache`) stores
``log sum_{v outside the top k} exp(beta z_v)`` for beta = n / 8, n in :data:`TAIL_GRID`, at every
cached position; :func:`interpolate_tail` reads it back at a step's temperature (exact on a grid
point, the cubic through the four nearest in between). Kept apart from the cache's file handling
because it is numerical work with its own tests and its own benchmark.
"""

from __future__ import annotations

import math

import torch

TAIL_GRID_STEP = 8  # the grid of inverse temperatures is n / 8 for n in TAIL_GRID
TAIL_GRID = tuple(range(2, 17))  # beta from 0.25 to 2: tau from 0.5 to 4
TAIL_SLICE = 4  # positions per tail pass: 4 x 49k float32 stays in a core's L2 cache


def tail_log_partitions(logits: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
    """``log sum_{v not in top_indices} exp(beta * logits_v)`` for every beta = n / 8 of
    TAIL_GRID: [P, len(TAIL_GRID)] float32 from logits [P, V] (float32) and indices [P, k];
    -inf where the tail is empty (k = V).

    Written by hand because 15 logsumexp calls over the vocabulary cost about as much as the
    teacher's forward pass on a CPU: here each entry takes ONE exp, e = exp((z - max) / 8),
    and the grid's powers e^n follow by multiplication, over slices of positions small enough
    to stay in a core's cache. Denormals are flushed meanwhile (powers of tiny terms would
    otherwise crawl through the CPU's slow path); terms that small are far below float32's
    resolution of a sum whose largest term is 1.
    """
    positions, width = logits.shape
    out = torch.full((positions, len(TAIL_GRID)), -math.inf, dtype=torch.float32)
    if top_indices.shape[-1] >= width:
        return out
    first, last = TAIL_GRID[0], TAIL_GRID[-1]
    betas = torch.tensor(TAIL_GRID, dtype=torch.float32, device=logits.device) / TAIL_GRID_STEP
    flushed = _denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        for start in range(0, positions, TAIL_SLICE):
            part = logits[start : start + TAIL_SLICE].float()
            tail = part.scatter(-1, top_indices[start : start + TAIL_SLICE].long(), -math.inf)
            top = tail.max(-1, keepdim=True).values
            top = torch.where(torch.isneginf(top), 0.0, top)  # a tail of -inf logits only
            step = tail.sub_(top).div_(TAIL_GRID_STEP).exp_()  # exp(-inf) = 0 drops the top k
            power = step.pow(first)
            sums = []
            for n in range(first, last + 1):
                sums.append(power.sum(-1))
                if n < last:
                    power.mul_(step)
            grid = torch.stack(sums, -1).log_()
            out[start : start + TAIL_SLICE] = (grid + betas * top).cpu()
    finally:
        torch.set_flush_denormal(flushed)
    return out


def _denormals_flushed() -> bool:
    """Whether the CPU flushes denormals now (torch has a setter but no getter)."""
    return float(torch.tensor([1e-40]) * 1.0) == 0.0


def interpolate_tail(grid: torch.Tensor, temperature: float) -> torch.Tensor:
    """The tail's log-partition at ``temperature`` from its values on the grid [..., G]: exact
    on a grid point, else the cubic in beta = 1 / tau through the four nearest grid points."""
    betas = [n / TAIL_GRID_STEP for n in TAIL_GRID]
    beta = 1.0 / temperature
    if not betas[0] - 1e-9 <= beta <= betas[-1] + 1e-9:
        raise ValueError(
            f"temperature {temperature:g} is outside the teacher cache's range "
            f"[{1 / betas[-1]:g}, {1 / betas[0]:g}]; use the live teacher (teacher_cache_k: 0)"
        )
    position = min(max((beta - betas[0]) * TAIL_GRID_STEP, 0.0), len(betas) - 1.0)
    nearest = round(position)
    if abs(position - nearest) <= 1e-9:
        return grid[..., nearest]
    low = min(max(int(math.floor(position)), 1), len(betas) - 3)  # stencil low-1 .. low+2
    t = position - low
    weights = (
        -t * (t - 1) * (t - 2) / 6,
        (t + 1) * (t - 1) * (t - 2) / 2,
        -(t + 1) * t * (t - 2) / 2,
        (t + 1) * t * (t - 1) / 6,
    )
    stencil = grid[..., low - 1 : low + 3]
    empty = torch.isneginf(stencil).any(-1)  # an empty tail is empty at every beta
    stencil = torch.where(torch.isneginf(stencil), 0.0, stencil)
    value = stencil @ torch.tensor(weights, dtype=stencil.dtype, device=stencil.device)
    return torch.where(empty, -math.inf, value)
