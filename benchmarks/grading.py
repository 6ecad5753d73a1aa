"""Grading throughput: 200 small generated submissions checked by ``cnncheck check -j 2``.

Reports models per second through the isolated workers, with the bubblewrap sandbox (where it works
here) and without, and the per-model overhead of isolation against checking the same models in this
process. Run: ``python benchmarks/grading.py [--count N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

TEMPLATE = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, {c1}, 3, padding=1, bias={bias})
        self.bn1 = nn.BatchNorm2d({c1})
        self.conv2 = nn.Conv2d({c1}, {c2}, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d({c2})
        self.fc = nn.Linear({c2} * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), {pool})
        return self.fc(x.flatten(1))
"""


def make_submissions(root: Path, count: int) -> list[Path]:
    files = []
    for i in range(count):
        folder = root / f"student_{i:03d}"
        folder.mkdir()
        source = TEMPLATE.format(c1=4 + i % 5, c2=8 + i % 7, bias=i % 3 == 0, pool=3 if i % 10 == 0 else 2)
        (folder / "model.py").write_text(textwrap.dedent(source))
        files.append(folder / "model.py")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    import cnncheck
    from cnncheck.discover import candidates, load_file
    from cnncheck.isolate import Job, check_files
    from cnncheck.sandbox import bwrap

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_submissions(Path(tmp), args.count)
        jobs = [Job(str(f), input_shape=(4, 1, 28, 28), unit=str(f.parent), cover=tmp) for f in files]
        for sandbox in ("none", "bwrap") if bwrap() else ("none",):
            mode = None if sandbox == "none" else sandbox
            check_files(jobs[:1], sandbox=mode)  # start the fork server once, as a long grading run would
            start = time.perf_counter()
            results = check_files(jobs, workers=args.jobs, sandbox=mode)
            timings[sandbox] = time.perf_counter() - start
            assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
        isolated = timings["none"]

        import torch

        torch.set_num_threads(1)  # as in each worker: tiny models run faster on one thread
        cnncheck.check_model(candidates(load_file(files[0]), files[0])[0].build(), (4, 1, 28, 28))  # warm up
        start = time.perf_counter()
        for f in files:
            for candidate in candidates(load_file(f), f):
                cnncheck.check_model(candidate.build(), (4, 1, 28, 28))
        in_process = time.perf_counter() - start

    flagged = sum(1 for r in results if not r.ok)
    print(f"{len(results)} models from {args.count} submissions ({flagged} with findings or errors)")
    for sandbox, seconds in timings.items():
        print(f"isolated, -j {args.jobs}, sandbox {sandbox}: {seconds:.1f} s = {len(results) / seconds:.1f} models/s")
    if "bwrap" not in timings:
        print("sandbox bwrap: not measured (bubblewrap is not usable here)")
    print(f"in-process, 1 thread, no isolation: {in_process:.1f} s = {len(results) / in_process:.1f} models/s")
    overhead = (isolated * args.jobs - in_process) / len(results)
    print(f"isolation overhead: {overhead * 1000:.0f} ms per model (worker time beyond the check itself)")


if __name__ == "__main__":
    main()
