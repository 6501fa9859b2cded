"""Helpers shared by the Triton-backed custom ops: their registration (`custom_op`, with an eager fast path), input
validation with clear errors (run once per argument signature: CheckedSignatures), and weight casts (cached: one
cast per weight per optimiser step).

Every op is registered with torch.library.custom_op under the "trm_fast::" namespace, with register_fake (shapes
for torch.compile's tracing) and register_autograd, so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

import os
import weakref

import torch

from trm_fast.kernels.layout import padded_rows

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Whether the kernels run in Triton's interpreter, which takes CPU tensors: Triton decides it when a kernel is
# decorated, from TRITON_INTERPRET at import (read once here, not at every call).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
INT32_MAX = 2**31 - 1
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


class EagerFastOp:
    """A trm_fast:: custom op with a second entry point for plain eager calls. A custom-op call pays torch.library's
    Python wrapper, the dispatcher and its autograd glue (about 7 us without grad, 13 us with, on one core of the
    development machine; ~220 calls per supervision step); outside tracing that buys nothing. So an eager call runs the implementation directly: through a
    torch.autograd.Function made from the op's own setup_context and backward when autograd records the call,
    else as a plain function call below autograd (as the op's dispatch runs it). One autograd rule, two entry points.

    The op itself is called, as before, whenever something may need to see it: torch.compile tracing, any
    TorchDispatchMode (fake and functional tensors, selective checkpointing, the launch counter of
    trm_fast.tools.bench.launches), a TorchFunctionMode, functorch transforms, a tensor subclass among the
    arguments, keyword arguments, or autograd recording an op without a registered rule (torch's own error).
    Attribute access (register_fake, ...) goes to the op; register_autograd registers the rule with both."""

    def __init__(self, op, implementation):
        self.op = op
        self._implementation = implementation
        self._apply = None  # the eager path's autograd.Function (its apply), made by register_autograd
        arguments = op._opoverload._schema.arguments
        self._tensor_args = tuple(i for i, a in enumerate(arguments) if a.type.isSubtypeOf(torch._C.TensorType.get()))
        # the schema's defaults by position (the op's wrapper passes them to setup_context; so must the eager path)
        self._defaults = tuple(a.default_value if a.has_default_value() else None for a in arguments)

    def __getattr__(self, name):  # only for names not set in __init__
        if name == "op":
            raise AttributeError(name)
        return getattr(self.op, name)

    def register_autograd(self, backward, *, setup_context) -> None:
        self.op.register_autograd(backward, setup_context=setup_context)
        function = type(f"{self.op._name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(self._implementation),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        })
        # autograd.Function.apply's Python layer binds default arguments through inspect.signature (~10 us a call)
        # and unwraps functorch wrappers; __call__ fills the defaults and functorch takes the op, so call the C apply
        self._apply = super(torch.autograd.Function, function).apply

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling() or kwargs or torch._C._len_torch_dispatch_stack() \
                or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active():
            return self.op(*args, **kwargs)
        if len(args) < len(self._defaults):
            args = args + self._defaults[len(args):]
        records = False
        for i in self._tensor_args:
            t = args[i]
            if type(t) not in _PLAIN_TENSORS:
                return self.op(*args)
            records = records or t.requires_grad
        if records and torch.is_grad_enabled():
            return self._apply(*args) if self._apply is not None else self.op(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return self._implementation(*args)


def custom_op(name: str):
    """Decorator: registers the function as the custom op `name` (no mutated arguments) and returns it as an
    EagerFastOp (register_fake and register_autograd on it as on torch.library's op)."""
    def register(implementation):
        return EagerFastOp(torch.library.custom_op(name, mutates_args=())(implementation), implementation)
    return register


def check_activation(op: str, name: str, t, ndim: int | None = None, min_ndim: int = 1) -> None:
    """A floating tensor of a supported dtype and of the expected rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions (batch, seq, channels), got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(t.shape)})")
    if not t.is_cuda and not INTERPRETED:
        raise ValueError(f"{op}: {name} is on {t.device}; the Triton kernels need CUDA tensors "
                         "(or TRITON_INTERPRET=1 to run them on the CPU)")


def check_like(op: str, ref_name: str, ref: torch.Tensor, name: str, t) -> None:
    """`t` has the shape, dtype and device of `ref`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, {ref_name} has {tuple(ref.shape)}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}, {ref_name} has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device}, {ref_name} on {ref.device}")


def check_weight(op: str, name: str, w, shape: tuple[int, int], device: torch.device) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {w.dtype}; supported: float32, float16, bfloat16")
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")
    if w.device != device:
        raise ValueError(f"{op}: {name} is on {w.device}, x on {device}")


class CheckedSignatures:
    """The argument signatures an op's checks have passed. The model calls each op hundreds of times a step with the
    same shapes, dtypes and devices; the checks (5 to 15 us of Python a call) then run once per signature, and a
    repeat costs building its key and one set lookup. The key holds everything the checks read: each tensor's shape,
    dtype and device (contiguity is not checked: the ops make their operands contiguous) and every other argument
    that is checked, with its type (2.0 == 2 == True). Kept apart per INTERPRETED, which the checks also read.
    Bounded: cleared when full (a run sees a handful of signatures)."""

    LIMIT = 4096

    def __init__(self):
        self._passed: dict[bool, set] = {False: set(), True: set()}

    def check(self, key, run_checks, *args) -> None:
        """run_checks(*args) unless `key` has passed before (a key of None always runs them: an argument was of a
        kind the key could not describe, so the checks should raise their clear error)."""
        if torch.compiler.is_compiling():  # traced once per graph: no guards on this cache's contents
            run_checks(*args)
            return
        passed = self._passed[INTERPRETED]
        if key is not None and key in passed:
            return
        run_checks(*args)
        if key is not None:
            if len(passed) >= self.LIMIT:
                passed.clear()
            passed.add(key)


def tensor_key(t):
    """(shape, dtype, device) of a tensor, None for None: the part of a CheckedSignatures key one tensor gives.
    Raises AttributeError for anything else (callers turn that into a key of None)."""
    return None if t is None else (t.shape, t.dtype, t.device)


def contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _cast_copy(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = padded_rows(*w.shape, dtype, w.device)
    with torch.no_grad():  # a value, not a graph: a cached cast must not hold its master (and the graph) alive
        out.copy_(w)
    return out


# The casts made so far: (id(master weight), dtype, transposed) -> (weak reference to the master, its stamp, the
# cast). A weight is used 2(n+1)T times per step in the forward and again in the backward; its value only changes when
# the optimiser (or an EMA swap, a checkpoint load) writes it in place, which bumps its version counter. An entry holds
# while the master's stamp (version, data_ptr, shape) is unchanged; its weak reference's callback drops it with the
# master. (Keyed by id, not by a WeakIdKeyDictionary, which builds a weak reference at every lookup.)
_CASTS: dict[tuple, tuple] = {}


def cast_weight(w: torch.Tensor, dtype: torch.dtype, transposed: bool = False) -> torch.Tensor:
    """The fp32 master weight (or, `transposed`, its transpose) in the activation dtype, as reference.linear casts it
    (the same values: a cast is deterministic), made once and reused until the master changes. When a copy is made,
    its rows start on 16-byte boundaries (trm_fast.kernels.layout.padded_rows): the token-mixing weights
    have rows of L = 97 or 916 values, which would otherwise force narrow, unaligned loads. Pass the master itself:
    the cache is keyed on it (a view made inside a custom op does not know its base).

    Not cached while a CUDA graph captures: a replay changes the masters without Python seeing it, so the graph casts
    at every use (trm_fast.train.cuda_graph bumps the masters' versions after each replay, so that no eager entry
    outlives one either). Inference tensors have no version counter: cast every time."""
    # the hot path (a cache hit, ~224 per step): one lookup and the stamp's three reads, nothing built but the key
    capturing = w.is_cuda and torch.cuda.is_current_stream_capturing()
    key = (id(w), dtype, transposed)
    found = _CASTS.get(key)
    if found is not None and not capturing and found[0]() is w and found[1] == w._version \
            and found[2] == w.data_ptr() and found[3] == w.shape:
        return found[4]
    if w.dtype == dtype:
        source = w.t() if transposed else w
        if source.is_contiguous():
            return source
    if capturing or w.is_inference():
        return _cast_copy(w.t() if transposed else w, dtype)
    out = _cast_copy(w.t() if transposed else w, dtype)
    if found is None or found[0]() is not w:  # a new entry (or one left by a master whose id was reused)
        reference = weakref.ref(w, lambda _, key=key: _CASTS.pop(key, None))
    else:
        reference = found[0]
    _CASTS[key] = (reference, w._version, w.data_ptr(), w.shape, out)
    return out


def outputs_without_grad(ctx, *aux: torch.Tensor) -> None:
    """For setup_context: an op's auxiliary outputs (what backward reads, never used by callers) carry no gradient.
    Otherwise autograd hands backward a materialised zero tensor for each one, a full-size allocation and memset per
    call (for SwiGLU's gate/up, 2I wide, more than the op's real gradients). Backward then gets None for them."""
    ctx.mark_non_differentiable(*aux)
    ctx.set_materialize_grads(False)
