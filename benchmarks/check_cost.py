"""What a full ``cnncheck.check_model`` costs, in units of one plain training step of the same model.

For each model, at input (2, 3, 224, 224) on CPU: the median time of ``check_model`` divided by the
median time of one plain forward + backward in train mode, both measured in this run (one warm-up
each, then interleaved repeats). Run: ``python benchmarks/check_cost.py [--repeats N] [model ...]``;
``--memory`` prints the peak memory of a check against that of one forward + backward instead, and
``--architecture`` times ``cnncheck.architecture`` (the layer table) in place of ``check_model``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import cnncheck

MODELS = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2")
SHAPE = (2, 3, 224, 224)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def measure(name: str, repeats: int, table: bool = False) -> tuple[float, float]:
    """(median seconds of check_model, or of architecture with ``table``, median seconds of one
    forward+backward)."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model: nn.Module = getattr(tvm, name)(weights=None)
    x = torch.randn(SHAPE)
    model.train()
    check = (lambda: cnncheck.architecture(model, SHAPE)) if table else (  # noqa: E731
        lambda: cnncheck.check_model(model, SHAPE))
    step = lambda: _train_step(model, x)  # noqa: E731
    check(), step()  # warm-up: allocator, oneDNN primitive caches, lazy imports
    checks, steps = [], []
    for _ in range(repeats):
        checks.append(_seconds(check))
        steps.append(_seconds(step))
    return statistics.median(checks), statistics.median(steps)


def peak_memory(name: str, what: str) -> int:
    """Bytes the process's peak resident memory grows by during one ``what`` ("step" or "check") of a
    fresh model, in a process of its own (``ru_maxrss`` only ever grows)."""
    import subprocess
    import sys

    code = (
        "import resource, warnings, torch, torchvision.models as tvm\n"
        "warnings.simplefilter('ignore'); torch.set_num_threads(1); torch.manual_seed(0)\n"
        f"m = getattr(tvm, {name!r})(weights=None); x = torch.randn({SHAPE!r})\n"
        "import cnncheck\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + ("m.train(); m(x).sum().backward()\n" if what == "step" else f"cnncheck.check_model(m, {SHAPE!r})\n")
        + "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true",
                        help="also the peak memory of a check against one plain forward+backward")
    parser.add_argument("--architecture", action="store_true",
                        help="time cnncheck.architecture (the layer table) instead of check_model")
    args = parser.parse_args()
    if args.memory:
        print(f"{'model':<14} {'check peak':>11} {'fwd+bwd peak':>13} {'ratio':>7}")
        for name in args.models:
            check, step = peak_memory(name, "check"), peak_memory(name, "step")
            print(f"{name:<14} {check / 2**20:>9.0f}MB {step / 2**20:>11.0f}MB {check / step:>6.2f}x", flush=True)
        return
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, input {SHAPE}, "
          f"median of {args.repeats}")
    print(f"{'model':<14} {'architecture' if args.architecture else 'check_model':>12} {'fwd+bwd':>10} {'ratio':>7}")
    for name in args.models:
        check, step = measure(name, args.repeats, args.architecture)
        print(f"{name:<14} {check:>11.3f}s {step:>9.3f}s {check / step:>6.1f}x", flush=True)


if __name__ == "__main__":
    main()
