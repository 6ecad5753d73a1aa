"""Where ``pytest --cnncheck -n 2`` starts to pay off: wall time, serial against pytest-xdist.

Each run is a fresh ``pytest --cnncheck`` subprocess on a folder of generated submissions (the small
models of ``benchmarks/grading.py``) or of heavier models, so torch's import and each worker's warm-up
are counted, as in CI. Run: ``python benchmarks/xdist.py [--counts 10 50 200] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grading import make_submissions  # noqa: E402  (the same submissions as the grading benchmark)

HEAVY = """
import cnncheck
import torchvision.models as tvm


@cnncheck.model(input_shape=(2, 3, {side}, {side}))
def net():
    return tvm.{name}(weights=None)
"""


def _wall(folder: Path, *options: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "--cnncheck", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *options, str(folder)], cwd=folder, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _heavy(root: Path, count: int, side: int) -> None:
    names = ["resnet18", "mobilenet_v2", "vgg11_bn", "densenet121"]
    for i in range(count):
        folder = root / f"heavy_{i:02d}"
        folder.mkdir()
        (folder / "model.py").write_text(textwrap.dedent(HEAVY.format(side=side, name=names[i % len(names)])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="*", default=[10, 50, 200, 400])
    parser.add_argument("--heavy", type=int, nargs="*", default=[4, 8, 16, 24], help="torchvision models at 128x128")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    xdist = ("-n", str(args.workers), "--dist", "loadfile")
    print(f"{'models':>24}  {'serial':>8}  {'-n ' + str(args.workers) + ' loadfile':>14}  ratio")
    for count in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            make_submissions(Path(tmp), count)
            serial, parallel = _wall(Path(tmp)), _wall(Path(tmp), *xdist)
        print(f"{count:>6} small submissions  {serial:7.1f}s  {parallel:13.1f}s  {parallel / serial:5.2f}")
    for count in args.heavy:
        with tempfile.TemporaryDirectory() as tmp:
            _heavy(Path(tmp), count, 128)
            serial, parallel = _wall(Path(tmp)), _wall(Path(tmp), *xdist)
        print(f"{count:>6} torchvision models   {serial:7.1f}s  {parallel:13.1f}s  {parallel / serial:5.2f}")


if __name__ == "__main__":
    main()
