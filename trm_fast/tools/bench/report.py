"""Benchmark results: one JSON per device and day (`<out>/<device>-<date>.json`) that every `trm-fast bench` command
merges its rows into (a row replaces an earlier one with the same key), a markdown report and PNG charts rendered
from the whole file, and the issue's targets set next to what was measured."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess

import torch

from trm_fast.tools.bench.timing import datasheet_peak_tflops, device_name, on_gpu

SECTIONS = ("ops", "step", "memory", "eval")
ROW_KEYS = {"ops": ("op", "shape", "mode", "contender"), "step": ("preset", "batch", "contender"),
            "memory": ("preset", "batch", "contender"), "eval": ("preset", "batch", "contender")}
COLUMNS = {
    "ops": ["op", "shape", "mode", "contender", "ms", "ms_cudagraph", "speedup_vs_eager", "tflops", "gbs",
            "copy_bw_fraction"],
    "step": ["preset", "batch", "contender", "ms_per_step", "steps_per_s", "tokens_per_s", "mfu_datasheet",
             "mfu_measured_matmul", "roofline_fraction", "compile_s", "peak_memory_bytes", "predicted_peak_bytes",
             "saved_for_backward_bytes", "speedup_vs_eager", "speedup_vs_compile"],
    "memory": ["preset", "batch", "contender", "saved_bytes", "fraction_of_eager", "held_after_forward_bytes",
               "peak_memory_bytes", "predicted_peak_bytes"],
    "eval": ["preset", "batch", "contender", "supervision_steps", "ms_per_batch", "puzzles_per_s", "speedup_vs_eager"],
}


# ---------------------------------------------------------------------------------------------- environment


def environment() -> dict:
    """Device, driver, library versions and the git commit the figures belong to."""
    env = {"device": device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "datasheet_bf16_tflops": datasheet_peak_tflops(), "cpu_threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["cuda"] = torch.version.cuda if on_gpu() else None
    env["driver"] = None
    if on_gpu():
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    env["commit"] = os.environ.get("TRM_FAST_COMMIT") or None  # for a copied tree without .git
    try:
        repo = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=repo, timeout=10).stdout.strip()
        if commit:
            env["commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def results_stem(out_dir: str, env: dict) -> str:
    device = re.sub(r"[^A-Za-z0-9._-]+", "_", env["device"]).strip("_")
    return os.path.join(out_dir, f"{device}-{env['date'][:10]}")


# ---------------------------------------------------------------------------------------------- the results file


from trm_fast.files import atomic_write_json, atomic_write_text, save_figure  # noqa: E402


def merge_results(out_dir: str, kind: str, rows: list[dict], extra: dict, notes: list[str], run: dict | None) -> dict:
    """Reads `<stem>.json` (if any), replaces rows of `kind` with the same key, updates the environment, ceilings and
    notes, and writes it back atomically. Returns the merged payload."""
    os.makedirs(out_dir, exist_ok=True)
    env = environment()
    path = results_stem(out_dir, env) + ".json"
    payload = {"environment": env, "ceilings": {}, "runs": [], "notes": {}, **{s: [] for s in SECTIONS}}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
            payload.update({k: old.get(k, payload[k]) for k in ("ceilings", "runs", "notes", *SECTIONS)})
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: {path} is unreadable ({exc}); starting a fresh results file")
    payload["environment"] = env
    key = lambda r: tuple(r.get(k) for k in ROW_KEYS[kind])
    fresh = {key(r) for r in rows}
    payload[kind] = [r for r in payload[kind] if key(r) not in fresh] + rows
    payload["ceilings"].update({k: v for k, v in extra.items() if v is not None})
    payload["notes"][kind] = sorted(set(payload["notes"].get(kind, [])) | set(notes))
    if run is not None:  # the final merge of a command (partial merges after each contender pass None)
        payload["runs"].append(run)
    payload["targets"] = evaluate_targets(payload)
    atomic_write_json(path, payload)
    payload["_path"] = path
    return payload


def render_folder(out_dir: str) -> list[str]:
    """Re-renders the markdown report and charts of every results JSON in `out_dir` (e.g. after a run was stopped
    by a hard time limit: its rows were merged after every contender, its report was not written)."""
    written = []
    for name in sorted(os.listdir(out_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(out_dir, name)
        try:
            with open(path) as f:
                payload = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict) or "environment" not in payload or not any(payload.get(s) for s in SECTIONS):
            continue
        payload["targets"] = evaluate_targets(payload)
        atomic_write_json(path, payload)
        atomic_write_text(path[:-5] + ".md", render_markdown(payload))
        written += [path[:-5] + ".md"] + render_charts(payload, path[:-5])
    return written


# ---------------------------------------------------------------------------------------------- markdown


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(r.get(c) is not None for r in rows)] or columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def targets_text(targets: list[dict]) -> str:
    mark = {True: "met", False: "NOT met", None: "reported"}
    return "\n".join(f"- [{mark[t['met']]}] {t['target']}: {t['measured']}" for t in targets)


def render_markdown(payload: dict) -> str:
    env = payload["environment"]
    ceil = payload.get("ceilings", {})
    lines = [f"# trm_fast benchmarks on {env['device']}", "",
             f"torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}, driver {env.get('driver')}, "
             f"commit {env.get('commit')}, {env['date']}", ""]
    if ceil:
        lines += ["Ceilings measured in the same runs: " + ", ".join(f"{k} = {_cell(v)}" for k, v in sorted(ceil.items())), ""]
    for kind in SECTIONS:
        if payload.get(kind):
            lines += [f"## {kind}", "", markdown_table(payload[kind], COLUMNS[kind]), ""]
            for note in payload.get("notes", {}).get(kind, []):
                lines.append(f"- {note}")
            lines.append("")
    lines += ["## Targets (reported, never asserted)", "", targets_text(payload.get("targets", [])), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- charts


def bar_chart(path: str, labels: list[str], series: dict[str, list[float | None]], ylabel: str, title: str,
              reference_line: float | None = 1.0, log_scale: bool = False) -> str:
    """Grouped bars (one group per label, one bar per series), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) * n + 2), 4.2))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log_scale:
        ax.set_yscale("log")
    if reference_line is not None:
        ax.axhline(reference_line, color="gray", lw=0.8, ls="--")
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _series(rows, label_of, contender_of, value_of, skip=("eager",)):
    labels = list(dict.fromkeys(label_of(r) for r in rows))
    names = [c for c in dict.fromkeys(contender_of(r) for r in rows) if c not in skip]
    table = {(label_of(r), contender_of(r)): value_of(r) for r in rows}
    return labels, {c: [table.get((l, c)) for l in labels] for c in names}


def render_charts(payload: dict, stem: str) -> list[str]:
    """Speed-up per op and per preset, memory per preset, evaluation throughput: one PNG each that has data."""
    device = payload["environment"]["device"]
    paths = []
    ops = [r for r in payload.get("ops", []) if r["mode"] == "fwd+bwd" and r.get("speedup_vs_eager")]
    if ops:
        labels, series = _series(ops, lambda r: f"{r['op']}\n{r['shape']}", lambda r: r["contender"],
                                 lambda r: r["speedup_vs_eager"])
        paths.append(bar_chart(stem + "-ops.png", labels, series, "speed-up vs eager (fwd+bwd, log scale)",
                               f"per-op speed-up, {device}", log_scale=True))
    step = [r for r in payload.get("step", []) if r.get("speedup_vs_eager")]
    if step:
        labels, series = _series(step, lambda r: f"{r['preset']} @{r['batch']}", lambda r: r["contender"],
                                 lambda r: r["speedup_vs_eager"])
        paths.append(bar_chart(stem + "-step.png", labels, series, "speed-up vs eager (whole step, log scale)",
                               f"training step speed-up, {device}", log_scale=True))
    memory = payload.get("memory", [])
    if memory:
        gpu = any(r.get("peak_memory_bytes") for r in memory)
        value = (lambda r: (r.get("peak_memory_bytes") or 0) / 2**30) if gpu else (lambda r: (r.get("saved_bytes") or 0) / 2**20)
        labels, series = _series(memory, lambda r: f"{r['preset']} @{r['batch']}", lambda r: r["contender"], value, skip=())
        paths.append(bar_chart(stem + "-memory.png", labels, series,
                               "peak GPU memory (GiB)" if gpu else "saved for backward (MiB)",
                               f"memory per preset, {device}", reference_line=None))
    ev = payload.get("eval", [])
    if ev:
        labels, series = _series(ev, lambda r: f"{r['preset']} @{r['batch']}", lambda r: r["contender"],
                                 lambda r: r["puzzles_per_s"], skip=())
        paths.append(bar_chart(stem + "-eval.png", labels, series, "puzzles / s (16 supervision steps)",
                               f"evaluation throughput, {device}", reference_line=None))
    return paths


# ---------------------------------------------------------------------------------------------- targets


def _fastest(rows, prefix="trm_fast"):
    cands = [r for r in rows if r["contender"].startswith(prefix) and r.get("ms_per_step")]
    return min(cands, key=lambda r: r["ms_per_step"]) if cands else None


def evaluate_targets(payload: dict) -> list[dict]:
    """The issues' targets next to what this file holds: met True/False, or None where only reported or absent."""
    out = []
    step = payload.get("step", [])
    for preset in ("sudoku-mlp", "sudoku-att"):
        rows = [r for r in step if r["preset"] == preset and r["batch"] == 768]
        best = _fastest(rows)
        name = f"{preset} whole step at batch 768 >= 2x eager and >= 1.3x torch.compile"
        if best is None:
            out.append({"target": name, "measured": "not measured (needs a GPU at batch 768)", "met": None})
            continue
        ve, vc = best.get("speedup_vs_eager"), best.get("speedup_vs_compile")
        met = None if ve is None or vc is None else (ve >= 2.0 and vc >= 1.3)
        out.append({"target": name, "met": met,
                    "measured": f"{best['contender']}: x{_cell(ve)} vs eager, x{_cell(vc)} vs torch.compile"})
    att = _fastest([r for r in step if r["preset"] == "sudoku-att" and r["batch"] == 768])
    mfu = att.get("mfu_datasheet") if att else None
    out.append({"target": "sudoku-att >= 40% MFU (datasheet dense bf16)", "met": None if mfu is None else mfu >= 0.40,
                "measured": "not measured" if mfu is None else
                f"{att['contender']}: {100 * mfu:.1f}% of datasheet, {100 * (att.get('mfu_measured_matmul') or 0):.1f}% of measured matmul"})
    mlp = _fastest([r for r in step if r["preset"] == "sudoku-mlp" and r["batch"] == 768])
    roof = mlp.get("roofline_fraction") if mlp else None
    out.append({"target": "sudoku-mlp against its per-matmul roofline", "met": None,
                "measured": "not measured" if roof is None else
                f"{mlp['contender']}: the roofline time is {100 * roof:.1f}% of the measured step"})
    # fused ops against torch.compile and Liger, fwd+bwd, D = 512
    ops = [r for r in payload.get("ops", []) if r["mode"] == "fwd+bwd" and r["shape"].endswith("x512")]
    verdicts = []
    for (op, shape) in dict.fromkeys((r["op"], r["shape"]) for r in ops):
        group = {r["contender"]: r["ms"] for r in ops if r["op"] == op and r["shape"] == shape}
        rivals = {c: ms for c, ms in group.items() if c.startswith("compile") or c == "liger"}
        if "trm_fast" in group and rivals:
            best_rival = min(rivals, key=rivals.get)
            verdicts.append((f"{op} {shape}", group["trm_fast"] <= rivals[best_rival],
                             f"x{rivals[best_rival] / group['trm_fast']:.2f} vs {best_rival}"))
    out.append({"target": "every fused op (fwd+bwd) at least as fast as torch.compile and Liger at D = 512",
                "met": None if not verdicts else all(v for _, v, _ in verdicts),
                "measured": "; ".join(f"{n}: {t}" for n, _, t in verdicts) or "not measured (trm_fast ops need a GPU)"})
    bound = [r for r in payload.get("ops", []) if r["contender"] == "trm_fast" and r.get("copy_bw_fraction") is not None]
    out.append({"target": "memory-bound kernels (residual+norm) >= 80% of measured copy bandwidth",
                "met": None if not bound else all(r["copy_bw_fraction"] >= 0.8 for r in bound),
                "measured": "; ".join(f"{r['op']} {r['shape']} {r['mode']}: {100 * r['copy_bw_fraction']:.0f}%" for r in bound)
                or "not measured"})
    # issue 4's memory targets, reported by this suite
    memory = payload.get("memory", [])
    for preset in ("sudoku-att", "sudoku-mlp"):
        rows = {r["contender"]: r for r in memory if r["preset"] == preset and r["batch"] == 768}
        l2 = rows.get("trm_fast-L2")
        frac = l2.get("fraction_of_eager") if l2 else None
        out.append({"target": f"{preset} at 768: level 2 saves <= 1/16 of eager's bytes for backward",
                    "met": None if frac is None else frac <= 1 / 16,
                    "measured": "not measured" if frac is None else f"{frac:.4f} of eager ({1 / frac:.1f}x less)"})
    for presets, batch, limit in ((("sudoku-att", "sudoku-mlp"), 768, 4), (("maze", "arc1", "arc2"), 192, 8)):
        best = {}
        for r in memory + step:
            if r["preset"] in presets and r["batch"] == batch and r["contender"].startswith("trm_fast") and r.get("peak_memory_bytes"):
                if r["preset"] not in best or r["peak_memory_bytes"] < best[r["preset"]]["peak_memory_bytes"]:
                    best[r["preset"]] = r
        out.append({"target": f"{'/'.join(presets)} at batch {batch} train within {limit} GB of GPU memory",
                    "met": None if not best else all(r["peak_memory_bytes"] <= limit * 1e9 for r in best.values()),
                    "measured": "; ".join(f"{p}: {r['peak_memory_bytes'] / 1e9:.2f} GB ({r['contender']})" for p, r in best.items())
                    or "not measured (needs a GPU)"})
    overheads = []
    for preset in dict.fromkeys(r["preset"] for r in step):
        rows = {(r["contender"], r["batch"]): r["ms_per_step"] for r in step if r["preset"] == preset and r.get("ms_per_step")}
        for (c, b), ms in rows.items():
            if c == "trm_fast-L2" and ("trm_fast-L0", b) in rows:
                overheads.append((f"{preset}@{b}", ms / rows[("trm_fast-L0", b)] - 1))
    out.append({"target": "recomputation (level 2 vs level 0) costs at most 25% of step time",
                "met": None if not overheads else all(o <= 0.25 for _, o in overheads),
                "measured": "; ".join(f"{n}: +{100 * o:.0f}%" for n, o in overheads) or "not measured (needs a GPU)"})
    return out
