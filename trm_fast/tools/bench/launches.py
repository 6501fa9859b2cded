"""The kernel launches of one supervision step (forward of every cycle, the loss, backward) as a GPU would see them,
counted on a machine without one: the model runs on "meta" tensors (shapes and strides, no memory, no arithmetic)
in bf16 at a preset's real shape and batch, every Triton kernel launch is intercepted (recorded with its grid,
arguments and constexprs, never compiled or run) and every aten op is seen by a dispatch mode.

    launches = count_step_launches(config, batch=768, level=0)     # list[Launch], in issue order
    summary(launches)                                              # {"total", "triton", "cublas", "aten", ...}

Counting rules (tests/test_launches.py states them again and pins the counts):
  1. A Triton launch is one `kernel[grid](...)` call.
  2. An aten op reaching the dispatcher below autograd, after CompositeImplicitAutograd decomposition (as on CUDA,
     where e.g. `linear` becomes `t` + `mm`), is one launch, except:
     - views and metadata ops (the op returns an alias of an input: view, t, transpose, expand, slice, detach,
       `_unsafe_view`, ...): no kernel;
     - allocations without a fill (empty, empty_like, new_empty, empty_strided): the caching allocator, no kernel;
     - `.item()` (`_local_scalar_dense`): a device-to-host copy and sync, counted apart as `syncs` (on meta it
       answers 0 / False, so the host-side input checks pass);
     - ops on host tensors only (e.g. a Python scalar wrapped for `where`).
  3. `mm(a, b, out_dtype=float32)` is one cuBLAS launch. The ops' `mm_fp32` takes that path on CUDA; off CUDA it
     upcasts both operands (`_to_copy` to fp32 twice, then `mm`): that pattern is counted as the one CUDA op
     (`mm_fp32out`, operands kept in their bf16 form), as `trm_fast.tools.memory.allocation_only` models it.
  4. `mm`, `addmm`, `bmm`, `baddbmm`, the in-place `addmm_` and `baddbmm_` (and rule 3's op) are cuBLAS; every
     other counted aten op is "aten". A CUDA aten op that itself launches several kernels (embedding backward, a
     sort-based index_put) counts once, with one exception: an out-of-place `addmm` or `baddbmm` adding a matrix
     (not a 1-D bias, which cuBLASLt's epilogue reads) copies that matrix into its output first (`copy_`, one aten
     launch) and multiplies into it in place, as PyTorch's CUDA kernels do; the in-place forms copy nothing.
  5. Custom ops (`trm_fast::`) are not launches: their implementation runs and what it launches is counted.
A cast of an fp32 parameter to the activation dtype (`_to_copy` or `copy_` from the parameter) is also tagged
`weight_cast`: those are the casts one cast per optimiser step would remove.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import inspect
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trm_fast.config import TRMConfig

ACTIVATION_DTYPE = "bfloat16"
CUBLAS_OPS = {"mm", "addmm", "bmm", "baddbmm", "addmm_", "baddbmm_", "mm_fp32out"}
_ALLOCATIONS = {"empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted"}
_NOT_VIEWS_BUT_ALIASES = {"_unsafe_view", "lift_fresh"}  # no alias annotation in the schema, no kernel either


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    stride: tuple
    dtype: str
    itemsize: int

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."), t.element_size())

    @property
    def distinct_bytes(self) -> int:
        """Bytes of the distinct elements a kernel reads or writes (a broadcast axis, stride 0, counts once)."""
        n = 1
        for size, stride in zip(self.shape, self.stride):
            n *= size if stride != 0 else 1
        return n * self.itemsize if all(self.shape) else 0


@dataclasses.dataclass
class Launch:
    """One kernel launch. kind: "triton", "cublas" or "aten"; name: the kernel (Triton function name) or aten op;
    phase: "forward" (the supervision step's forward and loss) or "backward"; args: Triton arguments by name
    (TensorSpec, numbers, constexprs) or, for aten ops, {"inputs": [TensorSpec], "outputs": [TensorSpec]};
    grid: the Triton grid (3 axes); tags: e.g. {"weight_cast"}."""
    kind: str
    name: str
    phase: str
    args: dict
    grid: tuple | None = None
    tags: frozenset = frozenset()

    def to_json(self) -> dict:
        spec = lambda v: dataclasses.asdict(v) if isinstance(v, TensorSpec) else [spec(x) for x in v] \
            if isinstance(v, (list, tuple)) else v
        return {"kind": self.kind, "name": self.name, "phase": self.phase, "grid": self.grid,
                "tags": sorted(self.tags), "args": {k: spec(v) for k, v in self.args.items()}}


def _tensors(values) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(_tensors(v))
    return out


def _is_alias(func) -> bool:
    """The op returns a view of an input (alias annotation without a write), or is a no-kernel alias."""
    if func.is_view or func._opname in _NOT_VIEWS_BUT_ALIASES:
        return True
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class LaunchCounter(TorchDispatchMode):
    """Records the launches of what runs inside it (see the module docstring for the rules); `phase` is set by the
    caller. Meant for meta tensors: nothing is computed."""

    def __init__(self, device: torch.device, parameters=()):
        super().__init__()
        self.device = torch.device(device)
        self.phase = "forward"
        self.launches: list[Launch | None] = []  # None: a launch folded into a later one (rule 3)
        self.syncs = 0
        self._params = {id(p) for p in parameters}
        self._upcasts: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}  # id(fp32 copy) -> (index, copy, source)

    def record_triton(self, name: str, args: dict, grid: tuple) -> None:
        self.launches.append(Launch("triton", name, self.phase, args, grid))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "trm_fast":  # rule 5: run the implementation (its launches are counted), not the op
            from torch._library.custom_ops import _maybe_get_opdef

            with self:
                return _maybe_get_opdef(func._schema.name)._init_fn(*args, **kwargs)
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:  # rule 2: decomposed as on CUDA
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
            return False if args[0].dtype == torch.bool else 0
        out = func(*args, **kwargs)
        name = func._opname
        if _is_alias(func) or name in _ALLOCATIONS:
            return out
        inputs = _tensors(list(args) + list(kwargs.values()))
        outputs = _tensors([out])
        if not any(t.device == self.device for t in inputs + outputs):
            return out
        tags = set()
        if name in ("_to_copy", "copy_"):
            source = args[1] if name == "copy_" else args[0]
            target = args[0] if name == "copy_" else out
            if id(source) in self._params and source.dtype == torch.float32 and target.dtype != torch.float32:
                tags.add("weight_cast")
            if (name == "_to_copy" and source.dtype in (torch.bfloat16, torch.float16)
                    and out.dtype == torch.float32):
                self._upcasts[id(out)] = (len(self.launches), out, source)
        if name == "mm" and all(id(t) in self._upcasts and self._upcasts[id(t)][1] is t for t in args[:2]):
            folded = [self._upcasts.pop(id(t)) for t in args[:2]]
            for index, _, _ in folded:
                self.launches[index] = None
            self.launches.append(Launch("cublas", "mm_fp32out", self.phase, {
                "inputs": [TensorSpec.of(source) for _, _, source in folded], "outputs": [TensorSpec.of(out)]}))
            return out
        if name in ("addmm", "baddbmm") and args[0].dim() > 1 and kwargs.get("beta", 1) != 0:  # rule 4's copy
            self.launches.append(Launch("aten", "copy_", self.phase, {
                "inputs": [TensorSpec.of(out), TensorSpec.of(args[0])], "outputs": [TensorSpec.of(out)]}))
        kind = "cublas" if name in CUBLAS_OPS else "aten"
        self.launches.append(Launch(kind, name, self.phase, {"inputs": [TensorSpec.of(t) for t in inputs],
                                                             "outputs": [TensorSpec.of(t) for t in outputs]},
                                    tags=frozenset(tags)))
        return out

    def result(self) -> list[Launch]:
        return [launch for launch in self.launches if launch is not None]


@contextlib.contextmanager
def intercept_triton(counter: LaunchCounter | None):
    """Every Triton kernel launch inside (JIT-compiled or interpreted) is recorded by `counter`, not compiled or run
    (counter None: dropped, at no cost of its own, for host-time measurements). The ops refuse non-CUDA tensors
    unless the kernels run interpreted (TRITON_INTERPRET=1 when they were imported: _custom_op.INTERPRETED); both are
    set for the duration (nothing is interpreted: every launch stops here)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from trm_fast.ops import _custom_op

    def run(self, *args, grid, warmup, **kwargs):
        if counter is None:
            return
        fn = self.fn
        params = list(inspect.signature(fn).parameters)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
        bound = dict(zip(params, args)) | kwargs
        values = {k: TensorSpec.of(v) if isinstance(v, torch.Tensor) else v for k, v in bound.items()}
        if callable(grid):
            grid = grid(bound)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        counter.record_triton(fn.__name__, values | {"options": options}, grid)

    saved = JITFunction.run, InterpretedFunction.run, os.environ.get("TRITON_INTERPRET"), _custom_op.INTERPRETED
    JITFunction.run = InterpretedFunction.run = run
    os.environ["TRITON_INTERPRET"] = "1"
    _custom_op.INTERPRETED = True
    try:
        yield
    finally:
        JITFunction.run, InterpretedFunction.run = saved[:2]
        _custom_op.INTERPRETED = saved[3]
        if saved[2] is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved[2]


def step_config(config: TRMConfig, level: int) -> TRMConfig:
    """The configuration a GPU run of the Triton path at recomputation `level` uses: bf16 activations."""
    return config.override(["model.backend=triton", f"model.forward_dtype={ACTIVATION_DTYPE}",
                            f"model.recompute={level}"])


def meta_step(config: TRMConfig, batch: int, level: int, device: str = "meta"):
    """(model, run): the Triton-path model of `config` at recomputation `level` in bf16 on `device` ("meta" tensors:
    shapes only), and
    run(), one supervision step of it (forward, loss, backward of the loss divided by the batch, as the trainer runs
    it; not the optimiser step). run() launches whatever Triton kernels the ops launch: the caller intercepts them."""
    from trm_fast.model import build_model
    from trm_fast.tools.bench.step import random_batch
    from trm_fast.train.act import SupervisionState, supervision_step

    cfg = step_config(config, level)
    device = torch.device(device)
    with torch.device(device):
        model = build_model(copy.deepcopy(cfg.model))
    model.train()
    data = {k: v.to(device) for k, v in random_batch(cfg.model, batch, "cpu").items()}
    state = SupervisionState.fresh(model, batch, cfg.model.seq_len, device)
    slots = torch.arange(batch, device=device)
    puzzle_emb = getattr(model, "puzzle_emb", None)

    def run(between_phases=lambda: None) -> None:
        result = supervision_step(model, state, data, step=0, seed=0, slot_index=slots, training=True,
                                  loss_kind=cfg.train.loss)
        between_phases()
        (result.loss.total / batch).backward()
        if puzzle_emb is not None:
            puzzle_emb.pending.clear()

    return model, run


def count_step_launches(config: TRMConfig, batch: int, level: int, arch: int = 90) -> list[Launch]:
    """The launches of one supervision step (meta_step) of the Triton path at recomputation `level`, with the launch
    tables of `arch` (90: Hopper, 80: Ampere). The optimiser step is not included."""
    from trm_fast.kernels.aot import capture

    model, run = meta_step(config, batch, level)
    counter = LaunchCounter(torch.device("meta"), model.parameters())
    # capture(arch): Triton's active driver reports `arch`, so the launchers pick that GPU's launch tables; the
    # interception inside it stops every launch before the JIT sees it
    with capture(arch), intercept_triton(counter), counter:
        run(between_phases=lambda: setattr(counter, "phase", "backward"))
    return counter.result()


def summary(launches: list[Launch]) -> dict:
    """Launch counts: total, per kind, per phase, weight casts."""
    kinds = collections.Counter(launch.kind for launch in launches)
    phases = collections.Counter(launch.phase for launch in launches)
    return {"total": len(launches), "triton": kinds["triton"], "cublas": kinds["cublas"], "aten": kinds["aten"],
            "forward": phases["forward"], "backward": phases["backward"],
            "weight_casts": sum("weight_cast" in launch.tags for launch in launches)}


def by_name(launches: list[Launch]) -> collections.Counter:
    return collections.Counter(f"{launch.kind}:{launch.name}" for launch in launches)
