"""Plain-PyTorch references of every fused op: the oracle for the Triton kernels and the math of the
reference model. Dtype behaviour follows the published TRM code: activations stay in the forward dtype
(bf16 on GPU), matmuls cast fp32 master weights to that dtype, norms and RoPE compute in fp32 and cast
back.

The token loss `token_cross_entropy(logits, labels, kind, ignore_label)` is the published code in
trm_fast/token_loss.py, a leaf the trainer calls as well (its one definition; listed here as every op's reference).

Nothing here imports Triton, so this module runs everywhere.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from trm_fast.token_loss import token_cross_entropy  # noqa: F401  (the op's reference: see the docstring)

RMS_EPS = 1e-5


_mm_fp32_allocates_only = False  # set only by mm_fp32_allocation_only()


@contextlib.contextmanager
def mm_fp32_allocation_only():
    """Within: mm_fp32 allocates its result and computes nothing, so a CPU run allocates what a GPU run would (the
    CPU has no mm(out_dtype=) and upcasts its operands). For trm_fast.tools.memory.allocation_only: values are garbage."""
    global _mm_fp32_allocates_only
    previous, _mm_fp32_allocates_only = _mm_fp32_allocates_only, True
    try:
        yield
    finally:
        _mm_fp32_allocates_only = previous


# Per device type and operand dtype, whether torch.mm(a, b, out_dtype=float32) runs: decided by the first call (a
# build without that overload, or without a kernel for it, raises), then never tried again.
_MM_OUT_DTYPE_RUNS: dict[tuple[str, torch.dtype], bool] = {}


def mm_fp32_path(a: torch.Tensor) -> str:
    """Which path mm_fp32 takes for operands like `a`: "out_dtype" (one fp32-output matmul, no copies) or "upcast"
    (both operands copied to fp32 first). Off CUDA, and for fp32 operands, always "upcast" (a no-op cast for fp32);
    on CUDA, "out_dtype" unless it failed once in this process."""
    if not a.is_cuda or a.dtype == torch.float32:
        return "upcast"
    return "out_dtype" if _MM_OUT_DTYPE_RUNS.get((a.device.type, a.dtype), True) else "upcast"


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of 2-D a, b with fp32 output: fp32 accumulation, never rounded to the inputs' dtype (weight gradients,
    which autograd then sums over the recursion's tied uses in fp32). CUDA: torch.mm(out_dtype=float32), no copies;
    elsewhere, or where that overload fails (decided once per process, with one warning), an fp32 upcast of both
    operands."""
    if _mm_fp32_allocates_only:
        return torch.empty(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    if mm_fp32_path(a) == "out_dtype":
        key = (a.device.type, a.dtype)
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as exc:
            if not torch.compiler.is_compiling():  # a trace on fake tensors decides nothing for the real run
                _MM_OUT_DTYPE_RUNS[key] = False
                reason = (str(exc).strip().splitlines() or [""])[0][:160]
                warnings.warn(f"mm_fp32: torch.mm(..., out_dtype=torch.float32) fails on {a.device.type} {a.dtype} "
                              f"({type(exc).__name__}: {reason}); weight gradients upcast both operands to fp32 "
                              "instead (slower, more memory)", RuntimeWarning, stacklevel=2)
        else:
            if not torch.compiler.is_compiling():
                _MM_OUT_DTYPE_RUNS[key] = True
            return out
    return a.float() @ b.float()


class _CastedLinear(torch.autograd.Function):
    """x @ weight.T with a low-precision x and an fp32 master weight. Unlike F.linear(x, weight.to(x.dtype)), whose
    backward rounds each use's weight gradient to x's dtype before it reaches the fp32 master, this returns the
    weight gradient in fp32 (bf16 products, fp32 accumulation): a weight used 2(n+1) times in the recursion sums
    fp32 contributions. It also saves the fp32 master (a parameter, no copy) instead of a cast copy per use."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            g2, x2 = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
            grad_w = mm_fp32(g2.t(), x2).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).float().sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T with the fp32 master weight cast to the activation dtype (the published CastedLinear).
    With a lower-precision x the weight gradient comes back in fp32 (see _CastedLinear); with equal dtypes this is
    plain F.linear."""
    if x.dtype != weight.dtype and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _CastedLinear.apply(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def rms_norm(x: torch.Tensor, dim: int = -1, eps: float = RMS_EPS) -> torch.Tensor:
    """RMSNorm without gain, statistics in fp32, result cast back to the input dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(dim, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, eps: float = RMS_EPS, *, inject: torch.Tensor | None = None):
    """rms_norm(residual + x) over the last (channel) axis; the sum is taken in the activation dtype.
    With `inject`: (y, y + inject), as the Triton op returns them (the recursion's next network input)."""
    y = rms_norm(residual + x, -1, eps)
    return y if inject is None else (y, y + inject)


def add_rms_norm_seq(x: torch.Tensor, residual: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """rms_norm(residual + x) over the sequence axis (dim 1 of (B, L, D)): the MLP-mixer's post-norm."""
    return rms_norm(residual + x, 1, eps)


def _post_norm(op: str, out: torch.Tensor, x: torch.Tensor, post_norm: bool, inject: torch.Tensor | None = None,
               dim: int = -1):
    """A sub-layer's result: `out`, or with post_norm the block's post-norm rms_norm(x + out) (over `dim`), as the
    block composes it (add_rms_norm(out, x)); with `inject` (y, y + inject)."""
    if not post_norm:
        if inject is not None:
            raise ValueError(f"{op}: inject is the post-norm's second output; pass post_norm=True with it")
        return out
    if dim == -1:
        return add_rms_norm(out, x, inject=inject)
    if inject is not None:
        raise ValueError(f"{op}: its post-norm is over the sequence axis, which has no inject output")
    return add_rms_norm_seq(out, x)


def swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False, *,
           post_norm: bool = False, inject: torch.Tensor | None = None):
    """Channel SwiGLU: down(silu(gate) * up) with gate, up = chunk(x @ w_gate_up.T, 2) (gate first).
    `recompute` is accepted for interface parity with the Triton op; here autograd decides what is saved.
    `post_norm` (and `inject`): the block's post-norm of x + that (_post_norm)."""
    gate, up = linear(x, w_gate_up).chunk(2, dim=-1)
    return _post_norm("swiglu", linear(F.silu(gate) * up, w_down), x, post_norm, inject)


def swiglu_token_mix(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False, *,
                     post_norm: bool = False) -> torch.Tensor:
    """Token-mixing SwiGLU of the MLP-mixer: the SwiGLU applied along the sequence axis of (B, L, D).

    w_gate_up is (2I, L) and w_down (L, I). Written with an explicit transpose, as the published code does;
    the fused kernel works on (B, L, D) directly. `post_norm`: rms_norm(x + that) over the sequence axis.
    """
    out = swiglu(x.transpose(1, 2), w_gate_up, w_down).transpose(1, 2)
    return _post_norm("swiglu_token_mix", out, x, post_norm, dim=1)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (seq_len, head_dim) cos and sin tables, rotate-half convention (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, L, H, hd) in fp32, cast back to x's dtype. cos/sin are (L, hd)."""
    x32 = x.float()
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention on (B, L, H, hd), scale 1/sqrt(hd), fp32 softmax (explicit form)."""
    scale = q.shape[-1] ** -0.5
    s = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) * scale
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhlm,bmhd->blhd", p, v.float()).to(q.dtype)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through PyTorch's SDPA, as the published code runs it."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=False)
    return o.transpose(1, 2)


def attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    w_o: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    use_sdpa: bool = True,
    *,
    post_norm: bool = False,
) -> torch.Tensor:
    """Self-attention mixer: fused qkv projection (layout [q heads | k heads | v heads]), RoPE on q and k
    (skipped when cos is None), non-causal attention, output projection. `post_norm`: rms_norm(x + that)."""
    B, L, D = x.shape
    head_dim = w_qkv.shape[0] // (3 * num_heads)
    qkv = linear(x, w_qkv).view(B, L, 3 * num_heads, head_dim)
    q, k, v = qkv.split(num_heads, dim=2)
    if cos is not None:
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
    o = attention_sdpa(q, k, v) if use_sdpa else attention_core(q, k, v)
    return _post_norm("attention", linear(o.reshape(B, L, num_heads * head_dim), w_o), x, post_norm)
