"""cnncheck on real code: one timm model per CNN family, random weights, a small input.

For each model: the findings by rule, rule crashes, notes, and the cost of ``check_model`` in units of
one plain forward + backward of the same model in train mode (1 thread, median of ``--repeats``,
after one warm-up of each), each model in a process of its own.

Run: ``python benchmarks/zoo.py [-j 2] [--repeats 3] [--json out.jsonl] [model ...]``; the families
are in ``tests/zoo_models.py``. Needs timm (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def measure(name: str, repeats: int) -> dict[str, object]:
    import warnings

    import torch
    from zoo_models import build, zoo_input_shape

    import cnncheck

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = build(name)
    shape = zoo_input_shape(name)
    x = torch.randn(shape)

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x)
        (out if isinstance(out, torch.Tensor) else out[0]).float().sum().backward()

    def check() -> object:
        return cnncheck.check_model(model, shape)

    result: dict[str, object] = {"model": name, "input": list(shape)}
    try:
        report = check()
    except Exception as exc:  # noqa: BLE001 - the benchmark records what a user would see
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        return result
    step()
    model.zero_grad(set_to_none=True)
    checks, steps = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        check()
        checks.append(time.perf_counter() - start)
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    result.update(
        ratio=statistics.median(checks) / statistics.median(steps),
        check_s=statistics.median(checks),
        step_s=statistics.median(steps),
        findings=[{"rule": f.rule, "module": f.module, "message": f.message} for f in report.findings],
        crashes=[f"{c.rule}: {c.error}" for c in report.crashes],
        notes=list(report.notes),
    )
    return result


def _run_one(name: str, repeats: int, timeout: float) -> dict[str, object]:
    command = [sys.executable, __file__, "--worker", name, "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"timed out after {timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": name, "error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", help="write one JSON line per model to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.repeats)))
        return
    from zoo_models import ZOO

    names = args.models or [name for _, name in ZOO]
    results = []
    print(f"{'model':<32} {'ratio':>6} {'findings':>9} {'crashes':>8}")
    with ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda n: _run_one(n, args.repeats, args.timeout), names):
            results.append(result)
            if "error" in result:
                print(f"{result['model']:<32} error: {result['error']}", flush=True)
                continue
            rules = sorted({f["rule"] for f in result["findings"]})  # type: ignore[index, union-attr]
            print(f"{result['model']:<32} {result['ratio']:>5.1f}x {len(result['findings']):>9} "  # type: ignore[arg-type]
                  f"{len(result['crashes']):>8}  {' '.join(rules)}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
    ratios = [r["ratio"] for r in results if "ratio" in r]
    if ratios:
        print(f"{len(ratios)} models: median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x "
              f"({max(results, key=lambda r: r.get('ratio', 0))['model']})")


if __name__ == "__main__":
    main()
