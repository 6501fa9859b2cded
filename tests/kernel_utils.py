"""Helpers for kernel tests: seeded random inputs, NaN-poisoned outputs, a relative-error check."""
import torch

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)
    return t.requires_grad_(requires_grad)


def poisoned(*shape, dtype=torch.float32):
    """An output buffer full of NaN: a kernel that skips an element leaves NaN behind."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, name=""):
    assert not torch.isnan(actual).any(), f"{name}: NaN in output (unwritten element?)"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def rel_err(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()
