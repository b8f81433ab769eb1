"""Run the benchmarks: ``python -m bench.run [--full] [--only NAME ...]``.

Writes bench/results.json (figure name -> value, baseline, ratio, goal, unit) and prints
the table. Quick mode by default; ``--full`` adds the scaling rows.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

import torch

from bench.common import RESULTS, table, write_results

SUITES = ["transport", "weights", "actor_engine", "learner", "pipeline"]
VLLM_SUITES = ["actor_engine_vllm"]  # need vLLM: `make bench-vllm` runs them in .venv-vllm
GPU_SUITES = ["learner_gpu"]  # need CUDA (skipped with a message elsewhere): --only learner_gpu


def machine() -> str:
    return f"{platform.node() or 'host'}: {torch.get_num_threads()} torch threads, " \
           f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--full", action="store_true", help="long mode with scaling rows")
    parser.add_argument("--only", nargs="*", choices=SUITES + VLLM_SUITES + GPU_SUITES, help="run only these suites")
    parser.add_argument("--output", default=str(RESULTS), help="results JSON path")
    parser.add_argument("--model", default="tiny", help="the model the pipeline suite runs `hsd run` on")
    args = parser.parse_args(argv)
    figures = []
    for name in args.only or SUITES:
        module = importlib.import_module(f"bench.{name}")
        print(f"[bench] {name} ({'full' if args.full else 'quick'})", file=sys.stderr, flush=True)
        options = {"model": args.model} if name == "pipeline" else {}
        figures += module.run(quick=not args.full, **options)
    from pathlib import Path

    write_results(figures, Path(args.output), machine())
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
