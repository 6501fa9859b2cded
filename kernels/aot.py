"""Ahead-of-time compilation of every Triton kernel at every launch config the presets use, for real GPUs,
on a machine without one: `python -m trm_fast.kernels.aot [--arch 90 80] [--json out.json]`.

For each (kernel, config, arch) it builds PTX and cubin with triton.compile, then reads registers and spills
from ptxas -v (a compiled kernel object has no spill count without a driver) and reports shared memory, and
whether an sm_90 matmul build uses wgmma. Must run with TRITON_INTERPRET unset (interpreted kernels cannot be
compiled).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

KERNEL_MODULES = ("trm_fast.kernels.norm", "trm_fast.kernels.swiglu", "trm_fast.kernels.attention")
SHARED_LIMIT = {90: 232448, 80: 166912}  # opt-in shared memory per block (bytes)


def _ptxas() -> str:
    import triton

    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX versions recent triton emits
        path = os.path.join(base, name)
        if os.path.exists(path):
            return path
    return "ptxas"


def collect_specs(arch: int) -> list[dict]:
    """The launch configs that run on `arch` (tables may differ per architecture)."""
    specs = []
    for name in KERNEL_MODULES:
        specs.extend(importlib.import_module(name).aot_specs(arch))
    return specs


def compile_spec(spec: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    signature = dict(spec["signature"])
    for key in spec["constexprs"]:
        signature[key] = "constexpr"
    constexprs = {(fn.arg_names.index(k),): v for k, v in spec["constexprs"].items()}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        out = subprocess.run([_ptxas(), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode:
        raise RuntimeError(f"ptxas failed for {spec['label']} sm_{arch}: {out.stderr[-500:]}")
    regs = re.search(r"Used (\d+) registers", out.stderr)
    stores = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr))
    loads = sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", out.stderr))
    return {
        "label": spec["label"], "arch": arch, "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": stores, "spill_loads": loads, "shared_bytes": int(kernel.metadata.shared),
        "shared_limit": SHARED_LIMIT[arch], "num_warps": spec["num_warps"], "num_stages": spec["num_stages"],
        "is_matmul": spec["is_matmul"], "wgmma": "wgmma" in ptx, "cubin_bytes": len(kernel.asm["cubin"]),
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| kernel | arch | regs | spills (st/ld) | shared B | warps | stages | wgmma |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | sm_{r['arch']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                     f"{r['shared_bytes']} | {r['num_warps']} | {r['num_stages']} | {'yes' if r['wgmma'] else '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled ahead of time", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--only", help="substring filter on kernel labels")
    args = parser.parse_args(argv)
    rows = []
    for arch in args.arch:
        for spec in collect_specs(arch):
            if not args.only or args.only in spec["label"]:
                rows.append(compile_spec(spec, arch))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
