"""mm_fp32 (trm_fast.ops.reference): which path runs, decided once per process, with one warning on the slow one.

The CUDA decision is exercised on a CPU through a tensor subclass that reports is_cuda and whose torch.mm(...,
out_dtype=) behaves as a CUDA build with or without that overload would."""
import warnings

import pytest
import torch

from trm_fast.ops import reference


class _LikeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA; mm(out_dtype=) raises when `out_dtype_fails`."""

    out_dtype_fails = False
    out_dtype_calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.is_cuda.__get__:
            return True
        if func is torch.mm and "out_dtype" in kwargs:
            cls.out_dtype_calls += 1
            if cls.out_dtype_fails:
                raise RuntimeError("no kernel for mm with out_dtype")
            a, b = (t.as_subclass(torch.Tensor) for t in args)
            return a.float() @ b.float()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


@pytest.fixture
def fresh_decision(monkeypatch):
    monkeypatch.setattr(reference, "_MM_OUT_DTYPE_RUNS", {})
    monkeypatch.setattr(_LikeCuda, "out_dtype_calls", 0)


def _operands():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=g).bfloat16()
    b = torch.randn(5, 4, generator=g).bfloat16()
    return a, b, (a.float() @ b.float())


def test_off_cuda_the_upcast_runs_without_a_warning(fresh_decision):
    a, b, expected = _operands()
    assert reference.mm_fp32_path(a) == "upcast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = reference.mm_fp32(a, b)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert reference._MM_OUT_DTYPE_RUNS == {}


def test_on_cuda_the_fp32_output_matmul_runs_when_it_works(fresh_decision):
    a, b, expected = _operands()
    a, b = a.as_subclass(_LikeCuda), b.as_subclass(_LikeCuda)
    assert reference.mm_fp32_path(a) == "out_dtype"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = reference.mm_fp32(a, b)
    assert torch.equal(out.as_subclass(torch.Tensor), expected) and _LikeCuda.out_dtype_calls == 1
    assert reference.mm_fp32_path(a) == "out_dtype"


def test_a_failing_fp32_output_matmul_is_tried_once_and_warned_once(fresh_decision, monkeypatch):
    monkeypatch.setattr(_LikeCuda, "out_dtype_fails", True)
    a, b, expected = _operands()
    a, b = a.as_subclass(_LikeCuda), b.as_subclass(_LikeCuda)
    with pytest.warns(RuntimeWarning, match="out_dtype=torch.float32. fails on .* upcast both operands"):
        first = reference.mm_fp32(a, b)
    assert reference.mm_fp32_path(a) == "upcast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = reference.mm_fp32(a, b)
    assert _LikeCuda.out_dtype_calls == 1  # the failing overload is not tried again
    for out in (first, second):
        assert out.dtype == torch.float32 and torch.equal(out.as_subclass(torch.Tensor), expected)
