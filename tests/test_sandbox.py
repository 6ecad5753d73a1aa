"""The bubblewrap sandbox: one ``cnncheck check --sandbox bwrap`` run over a class where some
submissions attack the others, the machine and cnncheck itself. Each submission sees only its own
folder (read-only), a private /tmp, no network and no other process; the honest ones keep their
verdicts and files, and nothing is left running afterwards.

These tests need a bubblewrap that can create namespaces (``.ci/run`` installs it); elsewhere they
are skipped with that reason, like the CUDA tests on a machine without a GPU."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_hostile_channel import ATTACKS as CHANNEL_ATTACKS
from test_hostile_channel import NET as CHANNEL_NET
from test_hostile_channel import PROCESS_ATTACKS

from cnncheck import sandbox

pytestmark = pytest.mark.skipif(sandbox.bwrap() is None, reason="bubblewrap cannot create namespaces here")

ATTEMPT = textwrap.dedent("""
    import os
    seen = {}

    def attempt(what, action):
        try:
            seen[what] = repr(action())[:80]
        except Exception as exc:
            seen[what] = f"refused: {type(exc).__name__}"
""")
REPORT_WHAT_WAS_SEEN = '        if seen:\n            raise RuntimeError("SEEN " + json.dumps(seen))'


class _Net:
    """The hostile channel's model, which reports in forward what its attack at import saw."""

    @staticmethod
    def format(attack: str, bias: str) -> str:
        return CHANNEL_NET.format(attack=ATTEMPT + attack, bias=bias, in_forward=REPORT_WHAT_WAS_SEEN)


NET = _Net()

OTHER = "os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'clean', 'model.py')"
ATTACKS = {
    "reads_another": f"attempt('read', lambda: open({OTHER}).read())",
    "overwrites_another": f"attempt('overwrite', lambda: open({OTHER}, 'w').write('raise SystemExit'))",
    "deletes_another": "attempt('delete', lambda: os.remove(" + OTHER.replace("'clean'", "'biased'") + "))",
    "writes_its_own_folder": "attempt('own', lambda: open(os.path.join(os.path.dirname(__file__), 'x'), 'w').write('x'))",
    "writes_outside": "attempt('outside', lambda: open(OUTSIDE, 'w').write('x'))\n"
                      "attempt('system', lambda: open('/usr/lib/x', 'w').write('x'))",
    "uses_the_network": "import socket\nattempt('network', lambda: socket.create_connection(('1.1.1.1', 53), timeout=2))",
    "looks_for_processes": "attempt('processes', lambda: sorted(p for p in os.listdir('/proc') if p.isdigit()))",
    "signals_cnncheck": textwrap.dedent("""\
        import signal
        def hunt():
            hit = []
            for pid in [p for p in os.listdir('/proc') if p.isdigit() and p != '1']:
                try:
                    if b'cnncheck' in open(f'/proc/{pid}/cmdline', 'rb').read():
                        os.kill(int(pid), signal.SIGKILL)
                        hit.append(pid)
                except OSError:
                    pass
            return hit
        attempt('signals', hunt)
        attempt('parent', lambda: os.getppid())
    """),
    "shares_tmp": "attempt('tmp', lambda: (open('/tmp/note', 'w').write('x'), sorted(os.listdir('/tmp')))[1])",
    "fork_bomb": textwrap.dedent("""\
        import time
        for _ in range(40):
            if os.fork() == 0:
                time.sleep(300)  # ORPHAN_MARK
                os._exit(0)
    """),
    "orphan_in_a_new_session": textwrap.dedent("""\
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # ORPHAN_MARK"], start_new_session=True)
    """),
}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _orphans() -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "ORPHAN_MARK" in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict[str, dict], dict, Path, dict[str, str], float]:
    home = tmp_path_factory.mktemp("grading")
    root = home / "class"
    outside = home / "outside.txt"
    for name, attack in ATTACKS.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.py").write_text(NET.format(attack=attack.replace("OUTSIDE", repr(str(outside))),
                                                         bias=", bias=False"))
    marker = home / "pickle-ran-in-the-supervisor"
    for name, (at_import, in_forward) in {**CHANNEL_ATTACKS, **PROCESS_ATTACKS}.items():  # the same class
        (root / name).mkdir(parents=True)
        in_init = in_forward if name in PROCESS_ATTACKS else ""
        source = CHANNEL_NET.format(attack=at_import.replace("MARKER", repr(str(marker))), bias=", bias=False",
                                    in_forward=(in_forward if name in CHANNEL_ATTACKS else "") or "        pass")
        if in_init:
            source = source.replace("        self.bn = nn.BatchNorm2d(4)\n",
                                    "        self.bn = nn.BatchNorm2d(4)\n" + textwrap.indent(in_init, " " * 8))
        (root / name / "model.py").write_text(source)
    odd = Path(os.fsdecode(bytes(root) + b"/caf\xe9"))  # a Latin-1 folder name: not UTF-8
    odd.mkdir()
    (odd / "model.py").write_text(NET.format(attack="", bias=", bias=False").replace(
        "        if seen:", "        if True:\n            raise ValueError('\\udcff')\n        if seen:"))
    for name, bias in (("clean", ", bias=False"), ("biased", "")):
        (root / name).mkdir()
        (root / name / "model.py").write_text(NET.format(attack="", bias=bias))
    elsewhere = home / "elsewhere" / "linked"  # a symlinked submission, outside the class folder
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.py").write_text(NET.format(attack="", bias=", bias=False"))
    (root / "linked").symlink_to(elsewhere)
    (root / "empty").mkdir()
    (root / "zero_bytes").mkdir()
    (root / "zero_bytes" / "model.py").write_text("")
    before = _digest(root)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cnncheck", "check", str(root), "--sandbox", "bwrap", "-j", "2",
                           "--input-shape", "2,1,8,8", "--timeout", "20", "--max-memory", "2G", "--format", "json"],
                          capture_output=True, timeout=300, cwd=home)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = {Path(m["file"]).parts[1]: m for m in report["models"]}  # class/<submission>/...
    assert not marker.exists()  # no pickle was unpickled in cnncheck's process
    assert b"forged" not in done.stdout  # nothing reached cnncheck's stdout
    return rows, report, root, before, elapsed


def _tmp_parents(run) -> set[str]:
    """The top folders in /tmp that a worker sees there: those of the paths it is given (its cwd) and
    of the Python environment, when they are in /tmp (a clean clone in /tmp has its venv there)."""
    import cnncheck

    paths = [run[2], sys.prefix, os.path.dirname(cnncheck.__file__), *sys.path]
    return {Path(p).resolve().parts[2] for p in paths if p and len(Path(p).resolve().parts) > 2
            and Path(p).resolve().parts[1] == "tmp"}


def _seen(row: dict) -> dict[str, str]:
    assert row["error_kind"] == "forward" and "SEEN " in row["error"], row
    return json.loads(row["error"].split("SEEN ", 1)[1].split("}", 1)[0] + "}")


def test_the_report_says_which_sandbox(run) -> None:
    _, report, _, _, _ = run
    assert report["sandbox"]["name"] == "bwrap"
    assert "read-only" in report["sandbox"]["description"]


def test_the_honest_submissions_keep_their_verdicts_and_files(run) -> None:
    rows, _, root, before, _ = run
    assert rows["clean"]["error"] is None and rows["clean"]["findings"] == []
    assert [f["rule"] for f in rows["biased"]["findings"]] == ["redundant-bias-before-bn"]
    assert rows["linked"]["error"] is None and rows["linked"]["findings"] == []  # followed into its real folder
    assert _digest(root) == before  # nothing written, deleted or left behind in any submission


def test_a_submission_sees_no_other_submission(run) -> None:
    rows, _, _, _, _ = run
    assert _seen(rows["reads_another"])["read"] == "refused: FileNotFoundError"
    assert _seen(rows["overwrites_another"])["overwrite"] == "refused: FileNotFoundError"
    assert _seen(rows["deletes_another"])["delete"] == "refused: FileNotFoundError"


def test_its_own_folder_is_read_only_and_nothing_outside_is_writable(run) -> None:
    rows, _, root, _, _ = run
    assert _seen(rows["writes_its_own_folder"])["own"] == "refused: OSError"
    seen = _seen(rows["writes_outside"])
    assert seen["system"] == "refused: OSError"
    assert not (root.parent / "outside.txt").exists()  # under /tmp a write lands in the private one, and is gone


def test_no_network_no_other_process_and_a_private_tmp(run) -> None:
    rows, _, _, _, _ = run
    assert _seen(rows["uses_the_network"])["network"].startswith("refused:")
    assert _seen(rows["looks_for_processes"])["processes"] == repr(["1"])
    seen = _seen(rows["signals_cnncheck"])
    assert seen["signals"] == "[]" and seen["parent"] == "0"  # its parent is outside its pid namespace
    # not the machine's /tmp nor the other workers': only its note, and the folders of the paths it is given
    listing = eval(_seen(rows["shares_tmp"])["tmp"])
    assert "note" in listing and set(listing) <= {"note", Path(rows["clean"]["file"]).parts[0], *_tmp_parents(run)}


def test_forks_and_new_sessions_end_with_the_worker(run) -> None:
    rows, _, _, _, elapsed = run
    assert rows["fork_bomb"]["error"] is None and rows["orphan_in_a_new_session"]["error"] is None
    assert _orphans() == []
    assert elapsed < 150, elapsed  # 30 submissions, 2 at a time; the heartbeat runs into its 20 s deadline


def test_every_submission_has_a_row(run) -> None:
    rows, report, _, _, _ = run
    odd = next(key for key in rows if key.startswith("caf"))
    assert rows[odd]["error_kind"] == "forward"
    assert set(rows) == {*ATTACKS, *CHANNEL_ATTACKS, *PROCESS_ATTACKS, "clean", "biased", "linked", "empty",
                         "zero_bytes", odd}
    assert len(report["models"]) == len(rows)
    assert rows["empty"]["error_kind"] == rows["zero_bytes"]["error_kind"] == "no-model"


def test_the_channel_and_process_attacks_get_their_own_rows(run) -> None:
    rows, _, _, _, _ = run
    for name in ("forges_a_clean_row_for_another", "malformed_row", "sends_a_pickle", "says_done_early"):
        assert rows[name]["error_kind"] == "protocol", rows[name]
    assert rows["heartbeat"]["error_kind"] in ("timeout", "protocol")
    assert rows["raises_its_memory_limit"]["error_kind"] in ("memory", "build", "crash"), rows["raises_its_memory_limit"]
    for name in ("writes_to_the_parents_stdout", "leaves_orphans"):
        assert rows[name]["error"] is None and rows[name]["findings"] == [], rows[name]  # harmless in the sandbox
    # its parent is outside its pid namespace: os.getppid() is 0, and kill(0) ends its own group only
    assert rows["kills_the_fork_server"]["error_kind"] in (None, "crash"), rows["kills_the_fork_server"]


def test_a_sandbox_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(NET.format(attack="", bias=", bias=False"))
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no bwrap on this PATH
    done = subprocess.run([sys.executable, "-m", "cnncheck", "check", str(tmp_path), "--sandbox", "bwrap"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "bubblewrap is not installed" in done.stderr, done.stderr
    auto = subprocess.run([sys.executable, "-m", "cnncheck", "check", str(tmp_path), "--input-shape", "2,1,8,8"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.startswith("cnncheck: sandbox: none (submissions ran with your user's rights")


def test_the_plan_follows_a_symlinked_submission_and_keeps_the_environment_whole(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "alice"
    real.mkdir(parents=True)
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "alice").symlink_to(real)
    (tmp_path / "class" / "bob").mkdir()
    view = sandbox.plan([(str(tmp_path / "class" / "alice"), str(tmp_path / "class")),
                         (str(tmp_path / "class" / "bob"), str(tmp_path / "class"))])
    assert view.roots == (str((tmp_path / "class").resolve()), str(real.resolve()))
    alice = view.confinement(str(tmp_path / "class" / "alice"), str(tmp_path / "class"))
    assert alice.source == f"{sandbox.UNITS}/1" and alice.unit == str(tmp_path / "class" / "alice")
    assert view.confinement(str(tmp_path / "class" / "bob"), str(tmp_path / "class")).source == f"{sandbox.UNITS}/0/bob"
    # a folder of submissions that holds the Python environment is never covered by an empty one
    env = next(folder for folder in view.environment if not folder.startswith("/tmp"))
    around = sandbox.plan([(env, os.path.dirname(env))])
    assert around.confinement(env, os.path.dirname(env)).base is None


def _sandboxed(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnncheck", "check", *args, "--sandbox", "bwrap", "--format", "json"],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_a_path_that_climbs_out_of_the_current_folder_is_found(tmp_path: Path) -> None:
    """``cnncheck check ../x/model.py``: the worker starts in the command's folder, so ``..`` leads
    where it led outside."""
    (tmp_path / "here").mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.py").write_text(NET.format(attack="", bias=", bias=False"))
    done = _sandboxed(tmp_path / "here", "../x/model.py", "--input-shape", "2,1,8,8")
    [row] = json.loads(done.stdout)["models"]
    assert row["error"] is None and row["id"] == "../x/model.py::Net", row


def test_a_package_module_of_the_current_folder_is_a_target(tmp_path: Path) -> None:
    """``cnncheck check mypkg.models:Net`` from the project folder: its package is bound into the
    sandbox (relative imports and all), as the import finds it outside."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(NET.format(attack="", bias=", bias=False"))
    (package / "models.py").write_text("from .layers import Net\n")
    done = _sandboxed(tmp_path, "mypkg.models:Net", "--input-shape", "2,1,8,8")
    [row] = json.loads(done.stdout)["models"]
    assert row["error"] is None and row["id"] == "mypkg.models:Net", row


def test_a_plugin_the_sandbox_hides_is_blamed_on_the_plugin_not_the_submission(tmp_path: Path) -> None:
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "subs" / "ann" / "model.py").write_text(NET.format(attack="", bias=", bias=False"))
    (tmp_path / "course_rules.py").write_text("import cnncheck\n")
    done = subprocess.run([sys.executable, "-m", "cnncheck", "check", "subs", "--sandbox", "bwrap", "--input-shape",
                           "2,1,8,8", "--plugin", "course_rules", "--format", "json"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    [row] = json.loads(done.stdout)["models"]
    assert row["error_kind"] == "crash" and "cannot import" not in row["error"], row
    assert "the plugins given with --plugin cannot be loaded in the worker" in row["error"]
