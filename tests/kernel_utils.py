"""Helpers for kernel tests: the interpreter switch, seeded random inputs, NaN-poisoned outputs and the
low-precision error rule as an assertion.

Import this module before any Triton kernel module: without CUDA it sets TRITON_INTERPRET=1 so kernels run in
Triton's CPU interpreter (the switch is read when a kernel is decorated, i.e. at import).
"""
import os
import sys

import torch

from trm_fast.ops.accuracy import error_rule

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if "triton" in sys.modules and os.environ["TRITON_INTERPRET"] != "1":
        raise RuntimeError("kernel tests without CUDA need TRITON_INTERPRET=1 before Triton is imported")
DEVICE = "cuda" if GPU else "cpu"


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, requires_grad=False):
    """Fresh normal values from a seeded CPU generator (the same on every device), never zeros."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)
    return t.requires_grad_(requires_grad)


def poisoned(*shape, dtype=torch.float32):
    """An output buffer full of NaN: a kernel that skips an element leaves NaN behind."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, name=""):
    assert not torch.isnan(actual).any(), f"{name}: NaN in output (unwritten element?)"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def assert_bf16_rule(ours, torch_low, fp32_ref, name=""):
    """The low-precision error rule (trm_fast.ops.accuracy): our error against an fp32 reference is at most twice the
    error of PyTorch run in the same low precision against that reference."""
    assert not torch.isnan(ours.float()).any(), f"{name}: NaN in output"
    check = error_rule(ours, torch_low, fp32_ref)
    assert check.ok, f"{name}: low-precision {check.describe()}"
