"""The Triton ops' argument checks run once per argument signature (trm_fast.ops._custom_op.CheckedSignatures): a
repeat of a signature that passed skips them, anything else still gets its clear error."""
from kernel_utils import randn  # first: sets TRITON_INTERPRET

import pytest
import torch

from trm_fast.ops import _custom_op
from trm_fast.ops import attention as attention_ops
from trm_fast.ops import swiglu as swiglu_ops
from trm_fast.ops._custom_op import CheckedSignatures


def _attention_args(L=5, D=64, heads=2, seed=0):
    hd = D // heads
    return (randn(1, L, D, seed=seed), randn(3 * D, D, seed=seed + 1) * 0.1, randn(D, D, seed=seed + 2) * 0.1,
            torch.ones(L, hd), torch.zeros(L, hd), heads)


def test_checks_run_once_per_signature():
    calls = []
    checked = CheckedSignatures()
    for key in ("a", "a", "b", "a", None, None):
        checked.check(key, calls.append, key)
    assert calls == ["a", "b", None, None]  # a key of None (an argument the key cannot describe) always checks


def test_a_failed_check_is_not_remembered():
    checked = CheckedSignatures()

    def failing(_):
        raise ValueError("bad")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            checked.check("k", failing, None)


def test_the_attention_op_checks_a_signature_once(monkeypatch):
    calls = []
    real = attention_ops._check_attention
    monkeypatch.setattr(attention_ops, "_check_attention", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(attention_ops, "_ATTENTION_CHECKED", CheckedSignatures())
    args = _attention_args(L=7, seed=10)
    first = attention_ops.attention(*args)
    again = attention_ops.attention(*args)
    assert len(calls) == 1 and torch.equal(first, again)
    attention_ops.attention(*_attention_args(L=9, seed=11))  # a new shape: checked
    assert len(calls) == 2


def test_what_the_key_leaves_out_still_raises():
    x, w_qkv, w_o, cos, sin, heads = _attention_args(L=6, seed=20)
    attention_ops.attention(x, w_qkv, w_o, cos, sin, heads)  # this signature passes
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        attention_ops.attention(x, w_qkv, w_o, cos, sin, 2.0)  # == 2, but a float
    with pytest.raises(ValueError, match="RoPE table cos"):
        attention_ops.attention(x, w_qkv, w_o, cos[:-1], sin, heads)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        attention_ops.attention(x.numpy(), w_qkv, w_o, cos, sin, heads)
    with pytest.raises(ValueError, match="w_down has shape"):
        w_gate_up, w_down = randn(8, 64, seed=21), randn(64, 4, seed=22)
        swiglu_ops.swiglu(x, w_gate_up, w_down)  # passes
        swiglu_ops.swiglu(x, w_gate_up, w_down[:, :3])


def test_a_signature_that_passed_interpreted_is_refused_without_the_interpreter(monkeypatch):
    args = _attention_args(L=8, seed=30)
    attention_ops.attention(*args)  # CPU tensors pass: the kernels run in the interpreter
    monkeypatch.setattr(_custom_op, "INTERPRETED", False)  # as if the kernels had been imported for a GPU
    with pytest.raises(ValueError, match="CUDA"):
        attention_ops.attention(*args)
