"""Run the benchmarks: ``python -m bench.run [--full | --smoke] [--only NAME ...]``.

Writes bench/results.json (figure name -> value, baseline, ratio, goal, unit) and prints
the table. Quick mode by default; ``--full`` adds the scaling rows; ``--smoke`` takes each
measurement once at its smallest size, to show that the suites run, and writes a results
file only where ``--output`` names one (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

import torch

from bench.common import RESULTS, Scale, table, write_results

SUITES = ["transport", "weights", "actor_engine", "learner", "pipeline"]
VLLM_SUITES = ["actor_engine_vllm"]  # need vLLM: `make bench-vllm` runs them in .venv-vllm
GPU_SUITES = ["learner_gpu"]  # need CUDA (skipped with a message elsewhere): --only learner_gpu


def machine() -> str:
    return f"{platform.node() or 'host'}: {torch.get_num_threads()} torch threads, " \
           f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    scales = parser.add_mutually_exclusive_group()
    scales.add_argument("--full", dest="scale", action="store_const", const=Scale.FULL, default=Scale.QUICK,
                        help="long mode with scaling rows")
    scales.add_argument("--smoke", dest="scale", action="store_const", const=Scale.SMOKE,
                        help="each measurement once at its smallest size: checks that the suites run")
    parser.add_argument("--only", nargs="*", choices=SUITES + VLLM_SUITES + GPU_SUITES, help="run only these suites")
    parser.add_argument("--output", help=f"results JSON path (default {RESULTS}; none with --smoke)")
    parser.add_argument("--model", default="tiny", help="the model the pipeline suite runs `hsd run` on")
    args = parser.parse_args(argv)
    figures = []
    for name in args.only or SUITES:
        module = importlib.import_module(f"bench.{name}")
        print(f"[bench] {name} ({args.scale.value})", file=sys.stderr, flush=True)
        options = {"model": args.model} if name == "pipeline" else {}
        figures += module.run(args.scale, **options)
    output = args.output or (None if args.scale is Scale.SMOKE else RESULTS)
    if output is not None:
        write_results(figures, Path(output), machine())
    print(table(figures))
    if args.scale is Scale.SMOKE:
        print("[bench] smoke: each measurement ran once at its smallest size; these figures show that the "
              "suites run, not how fast (make bench measures)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
