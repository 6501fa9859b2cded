"""Ahead-of-time compilation of every Triton kernel launch the presets make, for real GPUs, on a machine without
one, exactly as Triton's JIT would build it:

    python -m trm_fast.kernels.aot [--arch 90 80] [--json rows.json] [--only TEXT] [--docs docs/kernels.md]

Faithful specialisation. The JIT does not compile a kernel's source as written: for each launch it specialises the
arguments' values (pointers 16-byte aligned, integers divisible by 16 -> `tt.divisibility`, integers equal to 1
-> constants) and compiles that. Those facts decide vectorised loads and cp.async pipelining, so a build without
them has other registers, shared memory and instructions than the kernel that runs. Here nothing restates those
rules: every build comes from a real launch.

1. Capture (`capture`). The launchers of kernels/*.py run at each preset's shapes (`preset_launches`, on "meta"
   tensors: shapes, strides and storage offsets without memory) while Triton's own JIT specialises each launch
   for a stand-in driver that reports the target GPU. Its `jit_cache_hook` records the JIT's serialised
   specialisation (signature, constants, attributes, options: what `JITFunction.preload` takes) and stops the JIT
   before it compiles or launches anything.
2. Compile (`compile_launch`). `JITFunction.preload` builds each distinct specialisation for sm_90 and sm_80; the
   registers and spills come from the ptxas log of that very compile (Triton runs ptxas with -v and its own flags),
   shared memory from the compiled kernel's metadata, and instruction counts from its PTX.

Batch sizes change integer arguments (M = B * L, the batch count of the weight-gradient kernel) and with them the
specialisation: every preset is captured at its own batch size, at USER_BATCH (a user's batch whose B * L is not a
multiple of 16 at any preset length) and at batch 1 (single-example evaluation). tests/test_aot_launches.py runs
the real ops (trm_fast.ops) the same way and fails if any of their launches is a specialisation not built here.

Results are cached per build (CACHE_DIR, one JSON file per key); the key covers everything Triton's own compile
cache key covers (Triton's sources and library, the kernel's source and dependencies, the specialisation and
options, the target and ptxas version, the compile-affecting environment), so a cached row is the row that
compiling again would give. It must run with TRITON_INTERPRET unset: interpreted functions cannot be compiled.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import sys
import time

import torch

from trm_fast.kernels.layout import padded_rows

ARCHS = (90, 80)
SHARED_LIMIT = {90: 232448, 80: 166912}  # opt-in shared memory per block (bytes): 227 KB on H100, 163 KB on A100
USER_BATCH = 101  # odd: B * L is not a multiple of 16 at any preset length (97, 916, 82, 901, 18, 40)
DTYPE = torch.bfloat16  # the presets' activation dtype on sm_80 and newer (forward_dtype "auto")
CACHE_DIR = os.environ.get("TRM_AOT_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "trm_fast", "aot"))
ROW_FORMAT = 3  # bump when a row's fields or their meaning change: old cache entries are then ignored
WGMMA_ROWS = 64  # a Hopper warpgroup MMA computes 64 rows: tl.dot on tiles of at least 64 rows must use it
DOCS_BEGIN = "<!-- aot-table:begin (written by python -m trm_fast.kernels.aot --docs docs/kernels.md) -->"
DOCS_END = "<!-- aot-table:end -->"


# ---------------------------------------------------------------------------------------------- capture


@dataclasses.dataclass(frozen=True)
class Launch:
    """One specialisation as Triton's JIT would compile it: `data` is its serialised form (JSON, the argument of
    JITFunction.preload), `key` the JIT's cache key of it (argument types, specialisations, options)."""
    kernel: str  # module.qualname of the @triton.jit function
    arch: int
    data: str
    key: str


_STAND_IN_DEVICES = itertools.count()


class _StandInDriver:
    """Answers what Triton's JIT asks the active driver while it specialises and compiles: the target GPU, and a
    device of its own (the JIT keeps its compiled kernels per device: a kernel built by an earlier compile must not
    satisfy a later capture, which would then try to launch it). Nothing is ever launched through it."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.device = (arch, next(_STAND_IN_DEVICES))

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return None


@contextlib.contextmanager
def _target(arch: int, cache_hook=None):
    """Triton's JIT specialises and compiles for `arch`; with `cache_hook`, the hook sees every compile request."""
    from triton import knobs
    from triton.runtime.driver import driver

    previous, previous_hook = driver._active, knobs.runtime.jit_cache_hook
    driver.set_active(_StandInDriver(arch))
    knobs.runtime.jit_cache_hook = cache_hook
    try:
        yield
    finally:
        driver._active, knobs.runtime.jit_cache_hook = previous, previous_hook


class Recorder:
    """What `capture` yields: the launches so far, each with the sites (`site` at the time) that made it."""

    def __init__(self, arch: int):
        self.arch = arch
        self.site = ""
        self.launches: dict[Launch, list[str]] = {}

    def hook(self, *, fn, compile, **_) -> bool:
        data = compile["specialization_data"]
        jit = fn.jit_function
        launch = Launch(f"{jit.fn.__module__}.{jit.fn.__qualname__}", self.arch, data, json.loads(data)["key"])
        self.launches.setdefault(launch, []).append(self.site)
        return True  # do not compile, do not launch


@contextlib.contextmanager
def capture(arch: int):
    """Every Triton kernel launched inside is specialised by the JIT for `arch` and recorded, not compiled or run.
    Launch with tensors on the "meta" device (or any device: nothing reads them). Under TRITON_INTERPRET the
    kernels are interpreted functions; their launches go to a JIT twin of the same function, so the record is
    the same as without the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    recorder = Recorder(arch)

    def interpreted_run(self, *args, grid, warmup, **kwargs):
        return _jit_twin(self).run(*args, grid=grid, warmup=warmup, **kwargs)

    original = InterpretedFunction.run
    InterpretedFunction.run = interpreted_run
    try:
        with _target(arch, recorder.hook):
            yield recorder
    finally:
        InterpretedFunction.run = original


# ---------------------------------------------------------------------------------------------- preset launches


@dataclasses.dataclass(frozen=True)
class BlockShape:
    """What decides a TRM block's kernel launches: widths, sequence length, mixer, heads, RoPE, batch."""
    batch: int
    seq: int  # total sequence length, puzzle tokens included
    hidden: int
    mlp_hidden: int
    mixer: str  # "attention" or "mlp"
    heads: int
    head_dim: int
    rope: bool
    token_mix_hidden: int

    @property
    def name(self) -> str:
        mix = f"att{self.heads}x{self.head_dim}{'+rope' if self.rope else ''}" if self.mixer == "attention" else \
            f"mlp{self.token_mix_hidden}"
        return f"B={self.batch},L={self.seq},D={self.hidden},I={self.mlp_hidden},{mix}"


def _preset_shapes(shape_of) -> dict:
    """shape_of(model config, batch) for every preset at its global batch, at USER_BATCH and at batch 1 -> the
    presets that have that shape."""
    from trm_fast.config import PRESETS, TRMConfig

    shapes: dict = {}
    for name in PRESETS:
        config = TRMConfig.preset(name)
        for batch in dict.fromkeys((config.data.global_batch_size, USER_BATCH, 1)):
            shapes.setdefault(shape_of(config.model, batch), []).append(name)
    return shapes


def preset_block_shapes() -> dict[BlockShape, list[str]]:
    """Every preset's block shape at its global batch, at USER_BATCH and at batch 1 -> the presets that have it."""
    return _preset_shapes(lambda m, batch: BlockShape(batch, m.total_seq_len, m.hidden_size, m.mlp_hidden, m.mixer,
                                                      m.num_heads, m.head_dim, m.pos_encoding == "rope",
                                                      m.token_mix_hidden))


def _meta(*shape, dtype=DTYPE):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _cast_weight(rows: int, cols: int) -> torch.Tensor:
    """The activation-dtype copy of an fp32 master weight as trm_fast.ops casts it (padded_rows)."""
    return padded_rows(rows, cols, DTYPE, "meta")


def block_launches(shape: BlockShape, recorder: Recorder, grad: bool, recompute: bool) -> None:
    """The kernel launches of one TRM block's forward (and backward when `grad`), with the buffers trm_fast.ops
    hands the launchers (tests/test_aot_launches.py checks that the real ops launch exactly these)."""
    from trm_fast.kernels import attention, matmul, norm, swiglu, token_mixer

    B, L, D, I = shape.batch, shape.seq, shape.hidden, shape.mlp_hidden
    mode = "bwd+recompute" if recompute else "bwd"
    eps = 1e-5

    def site(op: str, phase: str) -> None:
        recorder.site = f"{shape.name}:{op}.{phase}"

    x, y, rstd_c = _meta(B, L, D), _meta(B, L, D), _meta(B, L, dtype=torch.float32)
    if shape.mixer == "attention":
        H, hd = shape.heads, shape.head_dim
        qkv, o, lse = _meta(B, L, 3 * D), _meta(B, L, D), _meta(B * H, L, dtype=torch.float32)
        cos, sin = (_meta(L, hd, dtype=torch.float32), _meta(L, hd, dtype=torch.float32)) if shape.rope else (None, None)
        site("attention", "fwd")
        attention.attention_fwd(qkv, H, cos, sin, o, lse)
        if grad:
            site("attention", mode)
            attention.attention_bwd(_meta(B, L, D), qkv, o, lse, H, cos, sin, _meta(B, L, 3 * D))
        site("add_rms_norm", "fwd")
        norm.add_rms_norm_fwd(x, x, eps, y, rstd_c)
        if grad:
            site("add_rms_norm", "bwd")
            norm.rms_norm_bwd(_meta(B, L, D), y, rstd_c, _meta(B, L, D))
    else:
        T = shape.token_mix_hidden
        w = _cast_weight(L, 2 * T).t()  # stored transposed (trm_fast.ops.swiglu._token_weight)
        save = grad and not recompute
        h, gu = _meta(B, T, D), (_meta(B, 2 * T, D) if save else None)
        rstd_s = _meta(B, D, dtype=torch.float32)
        fused = token_mixer.fits(L)  # the sub-layer and its post-norm in one kernel (trm_fast.ops.swiglu)
        if fused:
            site("swiglu_token_mix", ("fwd+post_norm+save" if save else "fwd+post_norm") if grad else "fwd+post_norm nograd")
            token_mixer.token_mixer_fused(x, w, _cast_weight(L, T), eps, y, *((rstd_s, h, gu) if grad else ()))
        else:
            site("swiglu_token_mix", "fwd+save" if save else "fwd")
            swiglu.token_gate_up(x, w, h, gu)
        if grad:
            site("swiglu_token_mix", mode)
            dh, dgu = _meta(B, T, D), _meta(B, 2 * T, D)
            matmul.sum_over_batch_abt(_meta(B, L, D), h)
            if save:
                swiglu.swiglu_bwd_from_saved(gu.view(B, 2 * T * D), dh.view(B, T * D), dgu.view(B, 2 * T * D))
            else:
                swiglu.token_gate_up(x, w, h=None, dh=dh, dgu=dgu)
            matmul.sum_over_batch_abt(dgu, x)
        if not fused:
            site("add_rms_norm_seq", "fwd")
            norm.add_rms_norm_seq_fwd(x, x, eps, y, rstd_s)
        if grad:
            site("add_rms_norm_seq", "bwd")
            norm.rms_norm_seq_bwd(_meta(B, L, D), y, rstd_s, _meta(B, L, D))
    M = B * L
    x2d, w = _meta(M, D), _cast_weight(2 * I, D)
    save = grad and not recompute
    h, gu = _meta(M, I), (_meta(M, 2 * I) if save else None)
    site("swiglu", "fwd+save" if save else "fwd")
    swiglu.channel_gate_up(x2d, w, h, gu)
    site("swiglu", "triton_cublas fwd")  # its contender: the gate_up matmul on cuBLAS, then silu * up (its backward
    swiglu.swiglu_fwd_from_gate_up(_meta(M, 2 * I), h)  # is the elementwise one below, from gate/up saved or re-made)
    if grad:
        site("swiglu", mode)
        dh, dgu = _meta(M, I), _meta(M, 2 * I)
        if save:
            swiglu.swiglu_bwd_from_saved(gu, dh, dgu)
        else:
            swiglu.channel_gate_up(x2d, w, h=None, dh=dh, dgu=dgu)
    site("add_rms_norm", "fwd")
    norm.add_rms_norm_fwd(x, x, eps, y, rstd_c)
    site("add_rms_norm", "fwd+inject")  # a network call's last norm with then_add: y + inject from the same kernel
    norm.add_rms_norm_fwd(x, x, eps, y, rstd_c, _meta(B, L, D), _meta(B, L, D))
    if grad:  # (only y + inject carries gradient there: the plain backward)
        site("add_rms_norm", "bwd")
        norm.rms_norm_bwd(_meta(B, L, D), y, rstd_c, _meta(B, L, D))


@dataclasses.dataclass(frozen=True)
class LossShape:
    """What decides the token loss's launches: the logits (batch, puzzle tokens + seq, vocab) of the model's head,
    sliced past the puzzle tokens (the slice's offset sets the pointer's alignment)."""
    batch: int
    seq: int  # supervised positions (the task tokens)
    puzzle_len: int
    vocab: int

    @property
    def name(self) -> str:
        return f"B={self.batch},L={self.seq},P={self.puzzle_len},V={self.vocab}"


def preset_loss_shapes() -> dict[LossShape, list[str]]:
    """Every preset's loss shape at its global batch, at USER_BATCH and at batch 1 -> the presets that have it."""
    return _preset_shapes(lambda m, batch: LossShape(batch, m.seq_len, m.total_seq_len - m.seq_len, m.vocab_size))


LOSS_IGNORE_LABEL = -100  # trm_fast.data.format.IGNORE_LABEL (kernels import nothing above them; not specialised)


def loss_launches(shape: LossShape, recorder: Recorder) -> None:
    """The token loss's launches in training (forward and backward, each kind of loss), with the buffers
    trm_fast/ops/cross_entropy.py hands the launchers: the head's logits sliced past the puzzle tokens, int64
    labels, an upstream gradient of any stride (not specialised)."""
    from trm_fast.kernels import cross_entropy

    B, L, P, V = shape.batch, shape.seq, shape.puzzle_len, shape.vocab
    logits, labels = _meta(B, P + L, V)[:, P:], _meta(B, L, dtype=torch.int64)
    valid, correct = _meta(B, dtype=torch.int64), _meta(B, dtype=torch.int64)
    for kind, dtype in (("stablemax", torch.float64), ("softmax", torch.float32)):
        loss = _meta(B, dtype=dtype)
        recorder.site = f"{shape.name}:token_cross_entropy[{kind}].fwd"
        cross_entropy.token_cross_entropy_fwd(logits, labels, LOSS_IGNORE_LABEL, kind == "stablemax", loss, valid,
                                              correct)
        recorder.site = f"{shape.name}:token_cross_entropy[{kind}].bwd"
        cross_entropy.token_cross_entropy_bwd(_meta(B, dtype=dtype), logits, labels, valid, LOSS_IGNORE_LABEL,
                                              kind == "stablemax", _meta(B, L, V))


def preset_launches(arch: int, shapes: dict[BlockShape, list[str]] | None = None,
                    loss_shapes: dict[LossShape, list[str]] | None = None) -> dict[Launch, list[str]]:
    """Every distinct specialisation the presets launch on `arch` -> the sites ("shape:op.phase") that launch it:
    the blocks' forward without gradient (evaluation, the no-grad cycles), training with gate/up saved, training
    with the recompute option; the token loss's forward and backward."""
    shapes = preset_block_shapes() if shapes is None else shapes
    loss_shapes = preset_loss_shapes() if loss_shapes is None else loss_shapes
    with capture(arch) as recorder:
        for shape in shapes:
            block_launches(shape, recorder, grad=False, recompute=False)
            block_launches(shape, recorder, grad=True, recompute=False)
            block_launches(shape, recorder, grad=True, recompute=True)
        for shape in loss_shapes:
            loss_launches(shape, recorder)
    return recorder.launches


# ---------------------------------------------------------------------------------------------- compile


_TWINS: dict = {}


def _jit_twin(fn):
    """The JIT function of an interpreted kernel's source: it specialises launches exactly as the JIT would."""
    from triton.runtime.jit import JITFunction

    if fn.fn not in _TWINS:
        _TWINS[fn.fn] = JITFunction(fn.fn, **fn.kwargs)
    return _TWINS[fn.fn]


def jit_function(kernel: str, compile: bool = True):
    """The @triton.jit function `module.qualname`; with `compile=False`, an interpreted one's JIT twin."""
    from triton.runtime.jit import JITFunction

    module, _, name = kernel.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    if isinstance(fn, JITFunction):
        return fn
    if compile:
        raise RuntimeError(f"{kernel} is a {type(fn).__name__}: unset TRITON_INTERPRET to compile ahead of time")
    return _jit_twin(fn)


def describe(launch: Launch) -> tuple[str, str]:
    """(label, variant) of a specialisation: the kernel with its constexpr arguments (tiles, modes), and the
    runtime arguments' specialisation where it is not the common case: '!16' an integer not divisible by 16 or a
    pointer not 16-byte aligned, '=1' an integer equal to 1 (compiled as a constant)."""
    data = json.loads(launch.data)
    fn = jit_function(launch.kernel, compile=False)
    names = fn.arg_names
    consts = {names[k[0]]: v for k, v in zip(data["constant_keys"], data["constant_vals"])}
    divisible = {names[k[0]] for k, v in zip(data["attrs_keys"], data["attrs_vals"]) if ["tt.divisibility", 16] in v}
    tiles = ",".join(f"{n}={consts[n]}" for n in names if fn.params[names.index(n)].is_constexpr and n in consts)
    variant = []
    for n, ty in data["signature"].items():
        if ty == "constexpr" and not fn.params[names.index(n)].is_constexpr:
            variant.append(f"{n}=1")
        elif (ty.startswith("*") or ty[0] in "iu") and n not in divisible:
            variant.append(f"{n}!16")
    return f"{fn.fn.__name__.lstrip('_')}[{tiles}]", " ".join(variant)


def _cache_key(fn, launch: Launch) -> str:
    """Everything Triton's compile cache key covers (runtime/cache.py get_cache_key): Triton's sources and library,
    the kernel's source and dependencies, the specialisation and options, the backend (target, ptxas version), the
    environment variables that change a compile."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.cache import triton_key

    backend = make_backend(GPUTarget("cuda", launch.arch, 32))
    material = "\n".join([str(ROW_FORMAT), triton_key(), fn.cache_key, launch.data, backend.hash(),
                          str(sorted(get_cache_invalidating_env_vars().items()))])
    return hashlib.sha256(material.encode()).hexdigest()


def parse_ptxas(log: str) -> dict:
    """Registers and spill bytes from a `ptxas -v` log (the largest over the module's functions, spills summed)."""
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    return {
        "registers": max(regs) if regs else -1,
        "spill_stores": sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log)),
        "spill_loads": sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", log)),
    }


def ptx_counts(ptx: str) -> dict:
    """Instruction counts of the PTX: asynchronous copies to shared memory, and loads from global memory into
    registers (all of them, and the scalar ones of 1 or 2 bytes)."""
    return {
        "cp_async": len(re.findall(r"^\s*(?:@%p\d+\s+)?cp\.async\.c[ag]\.shared", ptx, re.M)),
        "ld_global": len(re.findall(r"^\s*(?:@%p\d+\s+)?ld\.global", ptx, re.M)),
        "ld_global_scalar16": len(re.findall(r"^\s*(?:@%p\d+\s+)?ld\.global(?:\.\w+)*\.(?:b16|u16|s16|b8|u8|s8)\s",
                                             ptx, re.M)),
        "wgmma": "wgmma" in ptx,
    }


def compile_launch(launch: Launch, cache_dir: str | None = CACHE_DIR) -> dict:
    """Build one specialisation with the JIT's own preload; a row of resources (or of the error that stopped it)."""
    from triton import knobs

    fn = jit_function(launch.kernel)
    key = _cache_key(fn, launch)
    path = os.path.join(cache_dir, f"{key}.json") if cache_dir else None
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    data = json.loads(launch.data)
    row = {"kernel": launch.kernel, "arch": launch.arch, "num_warps": data["options"]["num_warps"],
           "num_stages": data["options"]["num_stages"], "shared_limit": SHARED_LIMIT[launch.arch],
           "bf16": any(t == "*bf16" for t in data["signature"].values()), "key": launch.key}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True  # ptxas runs, its -v log printed
        try:
            with _target(launch.arch), contextlib.redirect_stdout(log):
                kernel = fn.preload(launch.data)
        finally:
            knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
        row.update(parse_ptxas(log.getvalue()))
        row.update(ptx_counts(kernel.asm["ptx"]))
        dot_rows = [int(m) for m in re.findall(r"tt\.dot .*-> tensor<(\d+)x", kernel.asm["ttir"])]
        row.update({"shared_bytes": int(kernel.metadata.shared), "dot_rows": min(dot_rows, default=0),
                    "cubin_bytes": len(kernel.asm["cubin"]), "error": None})
    except Exception as exc:  # one failing build must not hide the others' results
        row.update({"error": f"{type(exc).__name__}: {str(exc)[-1500:]}", "registers": -1, "spill_stores": -1,
                    "spill_loads": -1, "shared_bytes": -1, "dot_rows": 0, "wgmma": False, "cp_async": 0,
                    "ld_global": 0, "ld_global_scalar16": 0, "cubin_bytes": 0})
        return row  # not cached: an error may come from the environment
    row["compile_s"] = round(time.perf_counter() - start, 2)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        with open(f"{path}.{os.getpid()}.tmp", "w") as f:
            json.dump(row, f)
        os.replace(f"{path}.{os.getpid()}.tmp", path)
    return row


def problems(row: dict) -> list[str]:
    """What is wrong with a compiled row: the checks tests/test_aot_compile.py asserts."""
    if row["error"]:
        return [f"does not compile: {row['error']}"]
    issues = []
    if row["spill_stores"] or row["spill_loads"]:
        issues.append(f"spills {row['spill_stores']} B stored / {row['spill_loads']} B loaded")
    if row["shared_bytes"] > row["shared_limit"]:
        issues.append(f"shared memory {row['shared_bytes']} B > {row['shared_limit']} B")
    if row["arch"] == 90 and row["bf16"] and row["dot_rows"] >= WGMMA_ROWS and not row["wgmma"]:
        issues.append(f"sm_90 bf16 matmul of {row['dot_rows']}-row tiles without wgmma")
    if row["dot_rows"] and (row["ld_global_scalar16"] or not row["cp_async"]):
        issues.append(f"matmul tiles not staged by cp.async: {row['cp_async']} cp.async, "
                      f"{row['ld_global_scalar16']} scalar 1-2 byte global loads")
    return issues


def build_rows(archs=ARCHS, only: str | None = None, cache_dir: str | None = CACHE_DIR, progress=None) -> list[dict]:
    """Capture every preset launch for each arch, compile each distinct specialisation once; rows with their label,
    variant and launch sites."""
    rows = []
    for arch in archs:
        for launch, sites in preset_launches(arch).items():
            label, variant = describe(launch)
            if only and only not in label:
                continue
            row = dict(compile_launch(launch, cache_dir), label=label, variant=variant, sites=sorted(set(sites)))
            rows.append(row)
            if progress:
                progress(row)
    return rows


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[dict]) -> str:
    lines = ["| kernel | specialisation | arch | warps | stages | registers | spills (st/ld B) | shared B | wgmma | "
             "cp.async | ld.global |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["arch"], r["label"], r["variant"])):
        head = f"| {r['label']} | {r['variant'] or '-'} | sm_{r['arch']} | {r['num_warps']} | {r['num_stages']} |"
        if r["error"]:
            lines.append(f"{head} compile error | | | | | |")
            continue
        lines.append(f"{head} {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | "
                     f"{'yes' if r['wgmma'] else '-'} | {r['cp_async']} | {r['ld_global']} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """The builds grouped by kernel, tiles and architecture over their specialisations (the variants of batch
    sizes and shapes): the range of registers, the largest spills and shared memory."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((-r["arch"], r["label"], r["num_warps"], r["num_stages"]), []).append(r)
    lines = ["| kernel | arch | warps | stages | builds | registers | spills (st/ld B) | shared B | wgmma | cp.async |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (arch, label, warps, stages), group in sorted(groups.items()):
        if any(r["error"] for r in group):
            lines.append(f"| {label} | sm_{-arch} | {warps} | {stages} | {len(group)} | compile error | | | | |")
            continue
        regs = sorted({r["registers"] for r in group})
        lines.append(f"| {label} | sm_{-arch} | {warps} | {stages} | {len(group)} | "
                     f"{regs[0] if len(regs) == 1 else f'{regs[0]}-{regs[-1]}'} | "
                     f"{max(r['spill_stores'] for r in group)}/{max(r['spill_loads'] for r in group)} | "
                     f"{max(r['shared_bytes'] for r in group)} | {'yes' if all(r['wgmma'] for r in group) else '-'} | "
                     f"{max(r['cp_async'] for r in group)} |")
    return "\n".join(lines)


def write_docs_table(rows: list[dict], path: str) -> None:
    """Replace the table between the markers in `path` (atomic: temporary file, then os.replace)."""
    import triton

    with open(path) as f:
        text = f.read()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"{path}: no '{DOCS_BEGIN}' ... '{DOCS_END}' markers to write the table between")
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    body = f"\n(triton {triton.__version__}; {len(rows)} builds)\n\n{summary_table(rows)}\n"
    with open(f"{path}.tmp", "w") as f:
        f.write(head + DOCS_BEGIN + body + DOCS_END + tail)
    os.replace(f"{path}.tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT))
    parser.add_argument("--json", help="write the rows here (atomically)")
    parser.add_argument("--only", help="substring filter on kernel labels")
    parser.add_argument("--docs", help="write the resource table into this markdown file between its markers")
    parser.add_argument("--no-cache", action="store_true", help=f"compile everything again (cache: {CACHE_DIR})")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled ahead of time", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = build_rows(args.arch, args.only, None if args.no_cache else CACHE_DIR,
                      progress=lambda r: print(f"  sm_{r['arch']} {r['label']} {r['variant']}", file=sys.stderr))
    print(format_table(rows))
    bad = [(r["label"], r["variant"], r["arch"], p) for r in rows for p in problems(r)]
    print(f"\n{len(rows)} builds in {time.perf_counter() - start:.0f} s, {len(bad)} problem(s)"
          + "".join(f"\n  {label} {variant} sm_{a}: {p}" for label, variant, a, p in bad))
    if args.json:
        with open(f"{args.json}.tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(f"{args.json}.tmp", args.json)
    if args.docs:
        write_docs_table(rows, args.docs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
