"""The fused ops of the TRM block and of its token loss behind one interface, each in two implementations with the
same signature: "torch", the plain-PyTorch reference (trm_fast.ops.reference), and "triton", the Triton kernels
registered as torch custom ops (trm_fast/ops/{norm,swiglu,attention,cross_entropy}.py). The model's weights are the
same for both.

    add_rms_norm(x, residual)                 rms_norm(residual + x) over channels
    add_rms_norm(x, residual, inject=t)       (y, y + t) with y the above (the next network input)
    add_rms_norm_seq(x, residual)             the same over the sequence axis of (B, L, D)
    swiglu(x, w_gate_up, w_down)              channel SwiGLU MLP
    swiglu_token_mix(x, w_gate_up, w_down)    token-mixing SwiGLU of (B, L, D) along L
    attention(x, w_qkv, w_o, cos, sin, num_heads)   qkv projection, RoPE, attention, output projection
    token_cross_entropy(logits, labels, kind, ignore_label)   per-sample token loss (stablemax or softmax) and the
                                              counts of supervised and correctly predicted tokens; the trainer's,
                                              outside the blocks (the reference is trm_fast/token_loss.py)

The three sub-layers also take `post_norm=True`: they then return the block's post-norm of their residual sum,
norm(x + op(x)) with the norm of POST_NORMS (the channel SwiGLU also `inject=t`: (y, y + t)). A Triton sub-layer
runs that norm inside its own autograd node, whose backward adds the residual's gradient in its last matmul, with
no separate add; the reference composes the two ops. A block calls OpSet.post_norm, which fuses only where the
sub-layer and its norm both run on Triton and composes them otherwise.

`get_ops(implementations)` returns these functions (an OpSet) for a choice of implementation per op
(trm_fast.ops.resolve makes that choice for a model and a device; ops may differ). Some ops have further
implementations (OP_CONTENDERS): "swiglu" also runs as "triton_cublas", its gate_up matmul on cuBLAS and silu * up in
an elementwise Triton kernel (a contender for Hopper), chosen by name in an op override.
"""
from __future__ import annotations

from collections.abc import Mapping

from trm_fast.ops import reference

OP_NAMES = ("add_rms_norm", "add_rms_norm_seq", "swiglu", "swiglu_token_mix", "attention", "token_cross_entropy")
IMPLEMENTATIONS = ("torch", "triton")  # every op has both
OP_CONTENDERS = {"swiglu": ("triton_cublas",)}  # further implementations of some ops (Triton kernels too)
TRITON_IMPLEMENTATIONS = ("triton", "triton_cublas")  # those that need a GPU Triton runs on (or its interpreter)
POST_NORMS = {"attention": "add_rms_norm", "swiglu": "add_rms_norm", "swiglu_token_mix": "add_rms_norm_seq"}


def fuses_post_norm(implementation: str, norm_implementation: str) -> bool:
    """Whether a sub-layer on `implementation` runs its post-norm (on `norm_implementation`) in its own autograd
    node: both on Triton. The sub-layer's output then never leaves that node (trm_fast.tools.memory counts on it)."""
    return implementation in TRITON_IMPLEMENTATIONS and norm_implementation == "triton"


def _triton_op(op: str, implementation: str = "triton"):
    from trm_fast.ops import attention, cross_entropy, norm, swiglu  # imported lazily: they import Triton

    if (op, implementation) == ("swiglu", "triton_cublas"):
        return swiglu.swiglu_cublas
    return {"add_rms_norm": norm.add_rms_norm, "add_rms_norm_seq": norm.add_rms_norm_seq, "swiglu": swiglu.swiglu,
            "swiglu_token_mix": swiglu.swiglu_token_mix, "attention": attention.attention,
            "token_cross_entropy": cross_entropy.token_cross_entropy}[op]


def check_implementations(implementations: Mapping[str, str], what: str = "op implementations") -> None:
    """Every key an op of OP_NAMES, every value one of IMPLEMENTATIONS or of that op's OP_CONTENDERS."""
    for op, implementation in implementations.items():
        if op not in OP_NAMES:
            raise ValueError(f"{what}: {op!r} is not a fused op; the ops are {', '.join(OP_NAMES)}")
        allowed = IMPLEMENTATIONS + OP_CONTENDERS.get(op, ())
        if implementation not in allowed:
            raise ValueError(f"{what}: {op}={implementation!r}; an implementation of {op} is one of {allowed}")


class OpSet:
    """One function per op of OP_NAMES, as attributes of the same names, and `implementations`, op name ->
    implementation (shared: never mutate it)."""

    def __init__(self, implementations: dict[str, str]):
        self.implementations = implementations
        for op, implementation in implementations.items():
            setattr(self, op, getattr(reference, op) if implementation == "torch" else _triton_op(op, implementation))
        # per sub-layer: (op, its norm, whether they fuse), looked up once here rather than at each of ~84 calls a step
        self._post_norms = {op: (getattr(self, op), getattr(self, norm), fuses_post_norm(implementations[op],
                                                                                           implementations[norm]))
                            for op, norm in POST_NORMS.items() if op in implementations and norm in implementations}

    def post_norm(self, op: str, x, *args, inject=None, **kwargs):
        """norm(x + op(x, *args, **kwargs)) with the norm of POST_NORMS[op], on their implementations: one call of op
        with post_norm=True where both run on Triton (fuses_post_norm), else op, then the norm. With `inject` (the
        channel norms): (y, y + inject)."""
        sub_layer, norm, fused = self._post_norms[op]
        if fused:
            if inject is None:
                return sub_layer(x, *args, post_norm=True, **kwargs)
            return sub_layer(x, *args, post_norm=True, inject=inject, **kwargs)
        if inject is None:
            return norm(sub_layer(x, *args, **kwargs), x)
        return norm(sub_layer(x, *args, **kwargs), x, inject=inject)


_OP_SETS: dict[tuple, OpSet] = {}  # a plain dict, not lru_cache: torch.compile traces through it


def get_ops(implementations: str | Mapping[str, str]) -> OpSet:
    """The op set for one implementation name for every op, or a mapping with an entry for each op of OP_NAMES."""
    if isinstance(implementations, str):
        implementations = dict.fromkeys(OP_NAMES, implementations)
    check_implementations(implementations)
    missing = [op for op in OP_NAMES if op not in implementations]
    if missing:
        raise ValueError(f"op implementations: no implementation given for {', '.join(missing)}")
    key = tuple((op, implementations[op]) for op in OP_NAMES)
    found = _OP_SETS.get(key)
    if found is None:
        found = _OP_SETS[key] = OpSet(dict(key))
    return found
