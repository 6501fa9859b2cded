"""Ahead-of-time compilation of every Triton kernel at every launch config the presets use, for real GPUs, on a
machine without one:

    python -m trm_fast.kernels.aot [--arch 90 80] [--json rows.json] [--only LABEL_PART] [--docs docs/kernels.md]

The registry: each module in KERNEL_MODULES (and OPTIONAL_KERNEL_MODULES, when importable) exposes
`aot_specs(arch)` returning dicts with
    label       a unique name with the shape and dtype, e.g. "swiglu_gate_up[channel,I=1536,K=512,save,bf16]"
    fn          the @triton.jit kernel
    signature   {argument name: Triton type ("*bf16", "i32", "fp32", ...)} for the non-constexpr arguments
    constexprs  {argument name: value}
    num_warps, num_stages
    is_matmul   True when the kernel's inner loop is tl.dot (an sm_90 bf16 build must then use wgmma)

For each (spec, arch) it builds PTX and cubin with triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32)), runs the bundled ptxas -v on the PTX for registers and spills (a compiled kernel reports spills only once a
driver loads it), and reads shared memory from the kernel's metadata. It must run with TRITON_INTERPRET unset:
under the interpreter every @triton.jit function (Triton's own reduction helpers included) is an interpreted
function that cannot be compiled, so tests/test_aot_compile.py runs this module in a subprocess.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

KERNEL_MODULES = ("trm_fast.kernels.norm", "trm_fast.kernels.swiglu", "trm_fast.kernels.matmul")
OPTIONAL_KERNEL_MODULES = ("trm_fast.kernels.attention",)  # skipped while it has no aot_specs()
ARCHS = (90, 80)
SHARED_LIMIT = {90: 232448, 80: 166912}  # opt-in shared memory per block (bytes): 227 KB on H100, 163 KB on A100
SPEC_KEYS = ("label", "fn", "signature", "constexprs", "num_warps", "num_stages", "is_matmul")
DOCS_BEGIN = "<!-- aot-table:begin (written by python -m trm_fast.kernels.aot --docs docs/kernels.md) -->"
DOCS_END = "<!-- aot-table:end -->"


def _module_specs(name: str, arch: int) -> list[dict]:
    module = importlib.import_module(name)
    if not hasattr(module, "aot_specs"):
        return []
    fn = module.aot_specs
    specs = fn(arch) if "arch" in inspect.signature(fn).parameters else fn()
    for spec in specs:
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing:
            raise ValueError(f"{name}.aot_specs(): spec {spec.get('label', '?')!r} lacks {missing}")
    return specs


def collect_specs(arch: int) -> list[dict]:
    """Every spec of every registered kernel module for `arch` (launch tables may differ per architecture)."""
    specs = []
    for name in KERNEL_MODULES:
        specs.extend(_module_specs(name, arch))
    for name in OPTIONAL_KERNEL_MODULES:
        try:
            specs.extend(_module_specs(name, arch))
        except ImportError:
            pass
    labels = [s["label"] for s in specs]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise ValueError(f"duplicate AOT spec labels: {dupes}")
    return specs


def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for `arch` (triton >= 3.4 knobs), else the bundled binary."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except (ImportError, AttributeError):
        pass
    try:
        from triton import knobs

        return knobs.nvidia.ptxas.path
    except (ImportError, AttributeError):
        import triton

        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def parse_ptxas(stderr: str) -> dict:
    """Registers and spill bytes from `ptxas -v` output (summed over every function in the module)."""
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", stderr)]
    return {
        "registers": max(regs) if regs else -1,
        "spill_stores": sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", stderr)),
        "spill_loads": sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", stderr)),
    }


def compile_spec(spec: dict, arch: int) -> dict:
    """Compile one spec for `arch`; a row of resources (or of the error that stopped it)."""
    row = {"label": spec["label"], "arch": arch, "num_warps": spec["num_warps"], "num_stages": spec["num_stages"],
           "is_matmul": bool(spec["is_matmul"]), "shared_limit": SHARED_LIMIT[arch],
           "bf16": any("bf16" in str(t) for t in spec["signature"].values())}
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = spec["fn"]
        if not hasattr(fn, "arg_names") or type(fn).__name__ == "InterpretedFunction":
            raise RuntimeError("kernel is interpreted (TRITON_INTERPRET is set): cannot compile ahead of time")
        signature = dict(spec["signature"])
        signature.update({k: "constexpr" for k in spec["constexprs"]})
        constexprs = {(fn.arg_names.index(k),): v for k, v in spec["constexprs"].items()}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
        ptx = kernel.asm["ptx"]
        target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            out = subprocess.run([ptxas_path(arch), "-v", f"--gpu-name={target.group(1) if target else f'sm_{arch}'}",
                                  path, "-o", os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"ptxas failed: {out.stderr[-800:]}")
        row.update(parse_ptxas(out.stderr))
        row.update({"shared_bytes": int(kernel.metadata.shared), "wgmma": "wgmma" in ptx,
                    "cubin_bytes": len(kernel.asm["cubin"]), "error": None})
    except Exception as exc:  # one failing kernel must not hide the others' results
        row.update({"error": f"{type(exc).__name__}: {str(exc)[-1500:]}", "registers": -1, "spill_stores": -1,
                    "spill_loads": -1, "shared_bytes": -1, "wgmma": False, "cubin_bytes": 0})
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
    if row["arch"] == 90 and row["is_matmul"] and row["bf16"] and not row["wgmma"]:
        issues.append("sm_90 bf16 matmul without wgmma")
    return issues


def format_table(rows: list[dict]) -> str:
    lines = ["| kernel | arch | warps | stages | registers | spills (st/ld B) | shared B | wgmma |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['label']} | sm_{r['arch']} | {r['num_warps']} | {r['num_stages']} | compile error | | | |")
            continue
        lines.append(f"| {r['label']} | sm_{r['arch']} | {r['num_warps']} | {r['num_stages']} | {r['registers']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | {'yes' if r['wgmma'] else '-'} |")
    return "\n".join(lines)


def write_docs_table(rows: list[dict], path: str) -> None:
    """Replace the table between the markers in `path` (atomic: temporary file, then os.replace)."""
    with open(path) as f:
        text = f.read()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"{path}: no '{DOCS_BEGIN}' ... '{DOCS_END}' markers to write the table between")
    import triton

    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    body = f"\n(triton {triton.__version__}, ptxas -v; {len(rows)} builds)\n\n{format_table(rows)}\n"
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(head + DOCS_BEGIN + body + DOCS_END + tail)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT))
    parser.add_argument("--json", help="write the rows here (atomically)")
    parser.add_argument("--only", help="substring filter on kernel labels")
    parser.add_argument("--docs", help="write the resource table into this markdown file between its markers")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled ahead of time", file=sys.stderr)
        return 2
    jobs = [(spec, arch) for arch in args.arch for spec in collect_specs(arch)
            if not args.only or args.only in spec["label"]]
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    progress = tqdm(jobs, desc="AOT compile", unit="kernel", file=sys.stderr) if tqdm else jobs
    rows = [compile_spec(spec, arch) for spec, arch in progress]
    print(format_table(rows))
    bad = [(r["label"], r["arch"], p) for r in rows for p in problems(r)]
    print(f"\n{len(rows)} builds, {len(bad)} problem(s)" + "".join(f"\n  {l} sm_{a}: {p}" for l, a, p in bad))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
    if args.docs:
        write_docs_table(rows, args.docs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
