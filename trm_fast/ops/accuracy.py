"""The error rule a fused op must meet against the plain-PyTorch reference: the one definition the kernel tests
(tests/kernel_utils.py), the self-check of `model.backend=auto` (trm_fast.ops.self_check) and `trm-fast doctor`
apply.

In low precision (bf16, fp16) an op's relative error against the fp32 reference may be at most LOW_PRECISION_FACTOR
times the error of PyTorch itself run in that precision on the same inputs, plus ABSOLUTE_FLOOR (so that an exact
low-precision PyTorch result, e.g. on a tiny input, does not demand an exact kernel). In fp32, where PyTorch's "own
error" is zero, the floor is the whole allowance: the kernel must agree with the reference to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOW_PRECISION_FACTOR = 2.0
ABSOLUTE_FLOOR = 1e-6


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp32 (Frobenius norms over the whole tensor)."""
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


@dataclass(frozen=True)
class ErrorCheck:
    ours: float  # our relative error against the reference
    torch: float  # PyTorch's own, in the same precision
    ok: bool

    def describe(self) -> str:
        relation = "<=" if self.ok else ">"
        return (f"error {self.ours:.2e} {relation} {LOW_PRECISION_FACTOR:g} x PyTorch's {self.torch:.2e} "
                f"+ {ABSOLUTE_FLOOR:g}")


def error_rule(ours: torch.Tensor, torch_same_precision: torch.Tensor, reference: torch.Tensor) -> ErrorCheck:
    """`ours` against `reference` (fp32, or wider), next to PyTorch's result in ours' precision. NaN or inf anywhere
    in `ours` fails."""
    mine, theirs = rel_err(ours, reference), rel_err(torch_same_precision, reference)
    ok = bool(torch.isfinite(ours).all()) and mine <= LOW_PRECISION_FACTOR * theirs + ABSOLUTE_FLOOR
    return ErrorCheck(mine, theirs, ok)
