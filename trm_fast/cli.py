"""The `trm-fast` command line: train, eval, solve, presets, data, ablations, bench, convert, compare, doctor.

Nothing imported at the top of this module imports torch (tests/test_cli.py checks it): the commands import what
they need when they run, so the parser is cheap to build and settings that must precede torch's import (threads,
environment variables) can still be made once the arguments are parsed."""
from __future__ import annotations

import argparse
import json
import os
import sys

from trm_fast.config import PRESETS, TRMConfig, describe_presets
from trm_fast.data.build import add_data_subparser
from trm_fast.threads import apply_thread_settings
from trm_fast.tools.ablations import add_ablations_subparser
from trm_fast.tools.bench.cli import add_bench_subparser
from trm_fast.tools.compare import add_compare_subparser
from trm_fast.tools.convert import add_convert_subparser
from trm_fast.tools.doctor import add_doctor_subparser
from trm_fast.tools.run_config import config_from_flags
from trm_fast.train.tracking import TRACKERS


def train_config(args) -> TRMConfig:
    """`trm-fast train`'s configuration: --preset, --config, --set, then the flags that are shorthands for fields."""
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.puzzle_emb_device:
        overrides.append(f"train.puzzle_emb_device={args.puzzle_emb_device}")
    if args.cuda_graphs:
        overrides.append("train.cuda_graphs=true")
    return config_from_flags(args.preset, args.config, overrides)


def cmd_train(args) -> int:
    from trm_fast.train.distributed import init_distributed, shutdown
    from trm_fast.train.trainer import train

    config = train_config(args)
    init_distributed(config.train.device)  # under torchrun: NCCL for a CUDA run, gloo for a CPU one
    if args.print_config:
        print(config.to_json())
        return 0
    if args.memory_budget:
        from trm_fast.tools.memory import plan_for_budget

        config = plan_for_budget(config, args.memory_budget, log=print)
    try:
        summary = train(config, resume=args.resume, progress=not args.no_progress, init_from=args.init_from,
                        reinit_puzzle_emb=args.reinit_puzzle_emb, allow_fresh=args.allow_fresh,
                        overwrite=args.overwrite, trackers=args.log or ())
    finally:
        shutdown()
    if args.summary_json:
        from trm_fast.files import atomic_write_json

        atomic_write_json(args.summary_json, summary)
    return 0


def cmd_eval(args) -> int:
    from trm_fast.eval.evaluate import arc_scores, arc_voter_for, evaluate
    from trm_fast.checkpoint import load_trained_model
    from trm_fast.data.format import load_data
    from trm_fast.device import resolve_device

    device = resolve_device(args.device, flag="--device")
    model, config, _ = load_trained_model(args.ckpt, device, use_ema=not args.no_ema,
                                          log=lambda line: print(line, file=sys.stderr))
    trained_on = config.data.path
    if args.data:
        config = config.override([f"data.path={args.data}", "data.recipe="])
    data = load_data(config)
    _check_arc_provenance(trained_on, data.root)
    batch = args.batch_size or config.data.eval_batch_size or config.data.global_batch_size
    voter = arc_voter_for(data.root)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.ckpt.rstrip("/")))
    options = _test_time_options(args, verify=args.verify)
    if args.tta_sweep:
        return _tta_sweep(args, model, config, data, batch, device, options, out_dir)
    result = evaluate(model, data.test_set, data.test_meta, batch, device, max_steps=args.max_steps, arc_voter=voter,
                      per_step=args.per_step, test_time=options)
    if voter is not None:
        result.update(arc_scores(voter, out_dir))
    print(json.dumps(result, indent=2, default=str))
    if args.per_step:
        from trm_fast.files import atomic_write_json
        from trm_fast.train.plots import plot_accuracy_by_step

        os.makedirs(out_dir, exist_ok=True)
        for step, (exact, token) in enumerate(zip(result["exact_accuracy_by_step"], result["token_accuracy_by_step"]), 1):
            print(f"after {step:2d} supervision steps: exact {exact:.4f}, token {token:.4f}")
        atomic_write_json(os.path.join(out_dir, "eval_by_step.json"), result)
        png = plot_accuracy_by_step(result, os.path.join(out_dir, "eval_by_step.png"), title=f"{config.name}: {args.ckpt}")
        print(f"written: {os.path.join(out_dir, 'eval_by_step.json')}, {png}")
    return 0


def _test_time_options(args, verify: bool):
    """The TestTimeOptions of eval's and solve's flags (validated: bad values are refused by name)."""
    from trm_fast.eval.test_time import DEFAULT_NOISE, TestTimeOptions

    return TestTimeOptions(trajectories=args.trajectories, noise=DEFAULT_NOISE if args.noise is None else args.noise,
                           noise_seed=args.noise_seed, select=args.select, verify=verify, augment=args.augment,
                           max_steps=args.max_steps, chunk_rows=args.chunk_rows).validate()


def _tta_sweep(args, model, config, data, batch, device, options, out_dir) -> int:
    """eval --tta-sweep: exact accuracy against compute for K in 1, 2, 4, ... up to --trajectories (default 64),
    with and without verifier-guided halting, by q and by vote; test_time.json and test_time.png."""
    from dataclasses import replace

    from trm_fast.eval.test_time import SWEEP_TRAJECTORIES, evaluate_test_time
    from trm_fast.files import atomic_write_json
    from trm_fast.train.plots import plot_test_time

    top = args.trajectories if args.trajectories > 1 else SWEEP_TRAJECTORIES[-1]
    ks = tuple(k for k in SWEEP_TRAJECTORIES if k <= top)
    result = evaluate_test_time(model, data.test_set, data.test_meta, batch, device, replace(options, trajectories=top),
                                sweep=ks)
    result["checkpoint"] = args.ckpt
    print(f"{'K':>3} {'verify':>6} {'select':>6} {'exact':>7} {'calls/puzzle':>13} {'recovered':>9} {'lost':>5}")
    for row in result["sweep"]:
        print(f"{row['trajectories']:3d} {'yes' if row['verify'] else 'no':>6} {row['select']:>6} "
              f"{row['exact_accuracy']:7.4f} {row['network_calls_per_puzzle']:13.1f} {row['recovered']:9d} {row['lost']:5d}")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "test_time.json")
    atomic_write_json(json_path, result)
    png = plot_test_time(result, os.path.join(out_dir, "test_time.png"), title=f"{config.name}: {args.ckpt}")
    print(f"written: {json_path}, {png}")
    return 0


def _check_arc_provenance(trained_on: str, eval_root: str) -> None:
    """Refuses to score a model on ARC test pairs it trained on (trm_fast.eval.arc.check_no_overlap: the ARC-1/ARC-2
    rule and the content hashes of every trained pair). Datasets without provenance.json (not ARC) pass."""
    from trm_fast.eval.arc import check_no_overlap

    def has_provenance(root):
        return bool(root) and os.path.isfile(os.path.join(root, "provenance.json"))

    if has_provenance(trained_on) and has_provenance(eval_root):
        check_no_overlap(trained_on, eval_root)


def cmd_solve(args) -> int:
    """Sudoku (16, 36 or 81 cells) or Maze-Hard (30x30) puzzles, whichever the checkpoint was trained on."""
    import torch

    from trm_fast.checkpoint import load_trained_model
    from trm_fast.device import resolve_device
    from trm_fast.eval.inference import solve_tokens

    if args.arc_task:
        return _solve_arc(args)
    if bool(args.puzzle) == bool(args.puzzle_file):
        print("trm-fast solve: give the puzzle with --puzzle TEXT, --puzzle-file PATH or --arc-task ID (one of them)",
              file=sys.stderr)
        return 2
    text = args.puzzle
    if args.puzzle_file:
        try:
            with open(args.puzzle_file) as f:
                text = f.read()
        except OSError as exc:
            print(f"trm-fast solve: {args.puzzle_file}: {exc.strerror}", file=sys.stderr)
            return 2
    device = resolve_device(args.device, flag="--device")
    model, config, _ = load_trained_model(args.ckpt, device)
    is_maze = config.model.seq_len == 900 and config.model.vocab_size == 6
    try:
        if is_maze:
            from trm_fast.data.maze import parse_maze

            tokens = parse_maze(text)
        else:
            from trm_fast.data.sudoku import grid_to_tokens, parse_puzzle

            grid = parse_puzzle(text)
            tokens = grid_to_tokens(grid)
    except ValueError as exc:
        where = f"{args.puzzle_file}: " if args.puzzle_file else ""
        print(f"trm-fast solve: bad {'maze' if is_maze else 'puzzle'}: {where}{exc}", file=sys.stderr)
        return 2
    if not is_maze and tokens.size != config.model.seq_len:
        print(f"trm-fast solve: the puzzle has {tokens.size} cells but this model was trained on "
              f"{config.model.seq_len}-cell puzzles", file=sys.stderr)
        return 2
    max_steps = args.max_steps or config.model.halt_max_steps
    options = _test_time_options(args, verify=not args.no_verify)
    result = solve_tokens(model, torch.as_tensor(tokens), max_steps=max_steps, halt=not args.no_halt, test_time=options)
    prediction = result["prediction"].numpy()
    if is_maze:
        from trm_fast.data.maze import check_path, format_maze

        print(format_maze(prediction))
        verdict = check_path(tokens, prediction)
        valid, detail = verdict["valid"], (f" ({verdict['moves']} moves, shortest)" if verdict["valid"]
                                           else f" ({verdict['reason']})")
    else:
        from trm_fast.data.sudoku import format_grid, is_valid_solution, tokens_to_grid

        solution = tokens_to_grid(prediction, grid.shape[0])
        print(format_grid(solution))
        valid, detail = is_valid_solution(grid, solution), ""
    if result.get("verified"):
        how = f"valid from supervision step {result['steps']} (max {max_steps}; verifier-guided halting)"
    else:
        how = f"supervision steps: {result['steps']} (max {max_steps})"
    compute = f"; network calls: {result['network_calls']}" if "network_calls" in result else ""
    print(f"{how}; halting confidence: {result['halt_confidence']:.3f}; valid solution: {'yes' if valid else 'no'}"
          f"{detail}{compute}")
    return 0 if valid else 1


def _solve_arc(args) -> int:
    """An evaluation task of the checkpoint's ARC dataset (or --data): vote over its versions, print the top answers."""
    from trm_fast.checkpoint import load_trained_model
    from trm_fast.device import resolve_device
    from trm_fast.eval.inference import solve_arc_task

    model, config, _ = load_trained_model(args.ckpt, resolve_device(args.device, flag="--device"))
    root = args.data or config.data.path
    if not root or not os.path.isfile(os.path.join(root, "identifiers.json")):
        print(f"trm-fast solve: --arc-task needs the ARC dataset the model was trained on (give --data DIR; "
              f"{root or 'the checkpoint names none'} is not an ARC build)", file=sys.stderr)
        return 2
    _check_arc_provenance(config.data.path, root)
    result = solve_arc_task(model, root, args.arc_task, args.max_steps)
    for i, (ranked, truth, rank) in enumerate(zip(result["answers"], result["truths"], result["solved_at"])):
        print(f"test input {i + 1}: {len(ranked)} distinct answers from {result['versions']} versions; "
              + (f"the true output is answer {rank}" if rank else "the true output is not among them"))
        for a, grid in enumerate(ranked[:2]):
            print(f"  attempt {a + 1} ({grid.shape[0]}x{grid.shape[1]}):")
            print("\n".join("    " + "".join(str(int(v)) for v in row) for row in grid))
    solved = all(rank is not None and rank <= 2 for rank in result["solved_at"])
    print(f"task {args.arc_task}: {'solved' if solved else 'not solved'} within 2 attempts")
    return 0 if solved else 1


def cmd_presets(args) -> int:
    for name, about in describe_presets():
        print(f"{name:16s} {about}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (see `trm-fast presets`)")
    p.add_argument("--config", help="a YAML or JSON file of overrides (sections model, data, train)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a field (repeatable)")
    p.add_argument("--out", help="run folder (same as --set train.out_dir=...)")


def _add_test_time_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trajectories", type=int, default=1, metavar="K",
                   help="K copies of each puzzle in one batch, copies 2..K with noise in the recursion (PTRM)")
    p.add_argument("--noise", type=float, metavar="SIGMA",
                   help="scale of the Gaussian noise added to z in copies 2..K (default 0.3; docs/test_time.md)")
    p.add_argument("--noise-seed", type=int, default=0, metavar="S", help="seed of the noise and of the symmetries")
    p.add_argument("--select", choices=["q", "vote", "verified"], default="q",
                   help="which answer of a puzzle's copies and versions: highest halting logit (q), most frequent "
                        "(vote), or the one the verifier accepts (verified, else q)")
    p.add_argument("--augment", type=int, default=1, metavar="N",
                   help="N symmetric versions of each puzzle (Sudoku: relabel/transpose/permute; maze: up to 8 "
                        "dihedral), answers mapped back before selection")
    p.add_argument("--chunk-rows", type=int, help="rows per forward (default: a memory budget)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trm-fast", description="Train, run and study Tiny Recursive Models fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model")
    _add_config_args(p)
    p.add_argument("--resume", help="a checkpoint folder, a run folder, or 'auto' (latest under the run folder)")
    p.add_argument("--allow-fresh", action="store_true",
                   help="with --resume auto: start from step 0 when every checkpoint of the run is unusable "
                        "(refused otherwise)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of a checkpoint or run folder (e.g. what `convert import` wrote): "
                        "weights, EMA, puzzle table; fresh optimiser, schedule and sampler")
    p.add_argument("--reinit-puzzle-emb", action="store_true",
                   help="with --init-from: start the puzzle-embedding table from zeros (needed when the dataset has "
                        "another number of puzzle identifiers)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in the run folder (needed when it holds another configuration)")
    p.add_argument("--log", action="append", choices=TRACKERS,
                   help="also log to TensorBoard (<run>/tensorboard) or Weights & Biases (repeatable)")
    p.add_argument("--memory-budget", help="e.g. 8GB: choose the recompute level and micro-batch that fit")
    p.add_argument("--puzzle-emb-device", choices=["same", "cpu"],
                   help="cpu: keep the puzzle-embedding table in pinned host memory (train.puzzle_emb_device)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay the whole training step as one CUDA graph (train.cuda_graphs; CUDA only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--summary-json", help="also write the final summary here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its test split (all supervision steps)")
    p.add_argument("--ckpt", required=True, help="checkpoint folder or run folder")
    p.add_argument("--data", help="another built dataset folder")
    p.add_argument("--max-steps", type=int, help="supervision steps (default: the model's halt_max_steps)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA")
    p.add_argument("--out", help="folder for submission.json (ARC) and eval_by_step.* (default: beside the checkpoint)")
    p.add_argument("--per-step", action="store_true",
                   help="also the accuracy after each supervision step (test-time compute curve, eval_by_step.png)")
    p.add_argument("--verify", action="store_true",
                   help="verifier-guided halting (Sudoku, maze): run steps while the answer fails the label-free check")
    _add_test_time_args(p)
    p.add_argument("--tta-sweep", action="store_true",
                   help="accuracy against compute for K = 1, 2, 4 ... --trajectories (default 64), with and without "
                        "--verify, q and vote: test_time.json and test_time.png in --out")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("solve", help="solve one Sudoku or maze with a trained model")
    p.add_argument("--ckpt", required=True, help="checkpoint folder or run folder")
    p.add_argument("--puzzle", help="Sudoku: cells row by row, '.' or 0 for blanks; maze: 900 characters '# SG'")
    p.add_argument("--puzzle-file", help="a file holding the puzzle (a maze: 30 lines of '#', ' ' or '.', 'S', 'G')")
    p.add_argument("--arc-task", help="ARC: an evaluation task id of the model's dataset; votes over its versions")
    p.add_argument("--data", help="ARC: the built dataset folder (default: the one the model was trained on)")
    p.add_argument("--max-steps", type=int, help="supervision steps allowed (more = more test-time compute)")
    p.add_argument("--no-halt", action="store_true", help="ignore the halting head and run all max-steps")
    p.add_argument("--no-verify", action="store_true",
                   help="no verifier-guided halting: stop where the halting head says (the model alone)")
    _add_test_time_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("presets", help="list the named configurations")
    p.set_defaults(func=cmd_presets)

    add_data_subparser(sub)
    add_ablations_subparser(sub)
    add_bench_subparser(sub)
    add_convert_subparser(sub)
    add_compare_subparser(sub)
    add_doctor_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_thread_settings()  # before any command imports torch: its OpenMP pool reads them once
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as exc:
        print(f"trm-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
