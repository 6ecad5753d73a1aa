"""What a submission sends on the result channel is data, checked, never code: forged rows, pickles,
malformed rows, repeated or missing messages and heartbeats become that submission's own row, the other
submissions keep their verdicts, and the run ends within its deadlines."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from cnncheck.cli import main

NET = textwrap.dedent("""
    import gc, json, threading, time
    import multiprocessing.connection
    import torch
    from torch import nn


    def channels():
        return [o for o in gc.get_objects() if isinstance(o, multiprocessing.connection.Connection)]


    {attack}


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1{bias})
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
    {in_forward}
            return self.bn(self.conv(x)).mean(dim=(2, 3))
""")


def _forge(row: str) -> str:
    return f"for c in channels():\n    c.send_bytes(json.dumps({row}).encode())"


ATTACKS = {
    # folder: (code at import, code in forward)
    "forges_a_clean_row_for_another": (_forge('["result", {"id": "biased/model.py::Net", "file": "x", "name": "Net"}]'), ""),
    "malformed_row": (_forge('["result", {"bogus": 1}]'), ""),
    "sends_a_pickle": (textwrap.dedent("""
        class Payload:
            def __reduce__(self):
                return (open, (MARKER, "w"))

        for c in channels():
            c.send(("result", Payload()))
    """), ""),
    "says_done_early": (_forge('["done", None]'), ""),
    "heartbeat": ("", "        def beat():\n            while True:\n                time.sleep(0.2)\n"
                      "                for c in channels():\n                    c.send_bytes(b'[\"done\", null]')\n"
                      "        threading.Thread(target=beat, daemon=True).start()\n        while True:\n            pass"),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict[str, dict], float, Path]:
    root = tmp_path_factory.mktemp("hostile")
    marker = root.parent / "pickle-ran-in-the-supervisor"
    for name, (attack, in_forward) in ATTACKS.items():
        (root / name).mkdir()
        source = NET.format(attack=attack.replace("MARKER", repr(str(marker))), bias=", bias=False",
                            in_forward=in_forward or "        pass")
        (root / name / "model.py").write_text(source)
    (root / "clean").mkdir()
    (root / "clean" / "model.py").write_text(NET.format(attack="", bias=", bias=False", in_forward="        pass"))
    (root / "biased").mkdir()
    (root / "biased" / "model.py").write_text(NET.format(attack="", bias="", in_forward="        pass"))
    out = root.parent / "report.json"
    start = time.monotonic()
    code = main(["check", str(root), "--input-shape", "2,1,8,8", "--timeout", "8", "-j", "2", "--format", "json",
                 "--output", str(out)])
    elapsed = time.monotonic() - start
    rows = {m["id"].split("/")[-2]: m for m in json.loads(out.read_text())["models"]}
    assert code == 1
    return rows, elapsed, marker


def test_the_honest_submissions_keep_their_verdicts(report) -> None:
    rows, _, _ = report
    assert rows["clean"]["error"] is None and rows["clean"]["findings"] == []
    assert [f["rule"] for f in rows["biased"]["findings"]] == ["redundant-bias-before-bn"]


@pytest.mark.parametrize("name", ["forges_a_clean_row_for_another", "malformed_row", "sends_a_pickle"])
def test_a_forged_or_malformed_message_is_that_submission_s_protocol_error(report, name: str) -> None:
    rows, _, marker = report
    assert rows[name]["error_kind"] == "protocol", rows[name]
    assert "its results are not trusted" in rows[name]["error"]
    assert not marker.exists()  # the pickle was never unpickled


def test_a_worker_that_says_done_without_its_result_does_not_vanish(report) -> None:
    rows, _, _ = report
    assert rows["says_done_early"]["error_kind"] == "protocol"


def test_messages_do_not_extend_the_deadline(report) -> None:
    rows, elapsed, _ = report
    assert rows["heartbeat"]["error_kind"] in ("timeout", "protocol"), rows["heartbeat"]
    assert elapsed < 60, elapsed  # 7 submissions, 2 at a time, 8 s each at most


def test_every_submission_has_exactly_one_row(report) -> None:
    rows, _, _ = report
    assert set(rows) == {*ATTACKS, "clean", "biased"}


# -- the process, the memory limit, stdout, and odd names -------------------------------------------------
PROCESS_ATTACKS = {
    "raises_its_memory_limit": ("", textwrap.dedent("""\
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        self.hoard = bytearray(3 << 30)
    """)),
    "writes_to_the_parents_stdout": (textwrap.dedent("""\
        import os
        for pid in (os.getppid(), os.getpgid(0)):
            try:
                with open(f"/proc/{pid}/fd/1", "w") as out:
                    out.write('{"forged": "report"}\\n')
            except OSError:
                pass
    """), ""),
    "leaves_orphans": (textwrap.dedent("""\
        import subprocess, sys
        for _ in range(3):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # ORPHAN_MARK"])
    """), ""),
    "kills_the_fork_server": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", ""),
}


def _ps_orphans() -> list[str]:
    import subprocess

    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "ORPHAN_MARK" in line and "ps -eo" not in line]


def test_process_attacks(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "class"
    for name, (at_import, in_init) in PROCESS_ATTACKS.items():
        (root / name).mkdir(parents=True)
        source = NET.format(attack=at_import, bias=", bias=False", in_forward="        pass")
        if in_init:
            source = source.replace("        self.bn = nn.BatchNorm2d(4)\n",
                                    "        self.bn = nn.BatchNorm2d(4)\n" + textwrap.indent(in_init, " " * 8))
        (root / name / "model.py").write_text(source)
    (root / "clean").mkdir()
    (root / "clean" / "model.py").write_text(NET.format(attack="", bias=", bias=False", in_forward="        pass"))
    odd = root / "caf\udce9"  # a Latin-1 folder name: not UTF-8
    os_name = bytes(odd).decode("utf-8", "surrogateescape") if isinstance(odd, bytes) else str(odd)
    Path(os_name).mkdir()
    (Path(os_name) / "model.py").write_text(NET.format(attack="", bias="", in_forward="        raise ValueError('\\udcff')"))
    done = subprocess.run([sys.executable, "-m", "cnncheck", "check", str(root), "--input-shape", "2,1,8,8",
                           "--timeout", "20", "--max-memory", "2G", "--format", "json"],
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert b"forged" not in done.stdout
    rows = {m["id"].split("/")[-2]: m for m in json.loads(done.stdout.decode("utf-8"))["models"]}
    assert rows["clean"]["error"] is None and rows["clean"]["findings"] == []
    assert rows["raises_its_memory_limit"]["error_kind"] in ("memory", "build", "crash"), rows["raises_its_memory_limit"]
    assert rows["writes_to_the_parents_stdout"]["error"] is None
    assert rows["kills_the_fork_server"]["error"] is None or rows["kills_the_fork_server"]["error_kind"] == "crash"
    assert rows["leaves_orphans"]["error"] is None
    assert _ps_orphans() == []  # the worker's group was killed with it
    odd_rows = [m for key, m in rows.items() if key.startswith("caf")]
    assert len(odd_rows) == 1 and odd_rows[0]["error_kind"] == "forward"
    for fmt in ("text", "markdown", "junit", "sarif"):
        out = tmp_path / f"report.{fmt}"
        again = subprocess.run([sys.executable, "-m", "cnncheck", "check", os_name, "--input-shape", "2,1,8,8",
                                "--format", fmt, "--output", str(out)], capture_output=True, timeout=300, cwd=tmp_path)
        assert again.returncode == 1 and out.stat().st_size > 0, (fmt, again.stderr[-2000:])


# -- tampering with cnncheck or torch at import -------------------------------------------------------------
TAMPERING = {
    "wraps_check_model": "import cnncheck.api\n_real = cnncheck.api.check_model\n"
                         "def fake(*a, **k):\n    report = _real(*a, **k)\n    report.findings.clear()\n    return report\n"
                         "cnncheck.api.check_model = fake\n",
    "replaces_a_rule_helper": "import cnncheck.checks.redundant_bias as rb\n"
                              "rb.check = lambda ctx, rule: iter(())\n",
    "registers_a_report_hook": "import cnncheck\n\nclass Quiet:\n    @cnncheck.hookimpl\n"
                               "    def cnncheck_report(self, report, model):\n        report.findings.clear()\n\n"
                               "cnncheck.register(Quiet())\n",
    "patches_conv2d": "import torch.nn.functional as F\n_conv = F.conv2d\nF.conv2d = lambda *a, **k: _conv(*a, **k)\n",
}


def test_tampering_at_import_is_reported_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "class"
    for name, attack in TAMPERING.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.py").write_text(NET.format(attack=attack, bias="", in_forward="        pass"))
    (root / "biased").mkdir()
    (root / "biased" / "model.py").write_text(NET.format(attack="", bias="", in_forward="        pass"))
    out = tmp_path / "report.json"
    assert main(["check", str(root), "--input-shape", "2,1,8,8", "--format", "json", "--output", str(out), "-j", "2"]) == 1
    rows = {m["id"].split("/")[-2]: m for m in json.loads(out.read_text())["models"]}
    assert [f["rule"] for f in rows["biased"]["findings"]] == ["redundant-bias-before-bn"]  # the defect all share
    for name in TAMPERING:
        assert rows[name]["error_kind"] == "tampered", (name, rows[name])
        assert "no verdict can be trusted" in rows[name]["error"]
    assert "cnncheck.api.check_model" in rows["wraps_check_model"]["error"]
    assert "torch.nn.functional.conv2d" in rows["patches_conv2d"]["error"]
    assert "cnncheck_report hook" in rows["registers_a_report_hook"]["error"]
