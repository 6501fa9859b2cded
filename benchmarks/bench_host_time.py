"""Host time per supervision step with the kernel launches taken away (trm_fast.tools.bench.host_time):
`python benchmarks/bench_host_time.py [PRESET ...] [--level L] [--repeats N] [--compute-matmuls]` (default: every
preset, level 0, 5 repeats, matmuls allocated, not computed). Prints JSON, one object per preset."""
import argparse
import json

from trm_fast.config import TRMConfig
from trm_fast.tools.bench.host_time import step_host_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["sudoku-att", "sudoku-mlp", "maze"])
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compute-matmuls", action="store_true",
                        help="let the CPU compute the matmuls (the measurement before issue 14 item 5)")
    args = parser.parse_args()
    for preset in args.presets:
        result = step_host_time(TRMConfig.preset(preset), args.level, args.repeats,
                                compute_matmuls=args.compute_matmuls)
        print(json.dumps({"preset": preset, **result}))


if __name__ == "__main__":
    main()
