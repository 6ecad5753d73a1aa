"""pytest itself survives what a student's file does: a CUDA device on a machine without one, and code
that ends the process (sys.exit, os._exit, a KeyboardInterrupt it raises, a BaseException that is not an
Exception) at import or in forward. The file that does it fails with the reason; every other file is
checked. The user's own Ctrl-C still interrupts the run."""

from __future__ import annotations

import pytest
import torch
from test_pytest_plugin import CLEAN, RULES

pytest_plugins = ["pytester"]

NET = """
import os
import sys
import torch
from torch import nn
import cnncheck

{at_import}

@cnncheck.model(input_shape=(2, 3, 8, 8))
class Quits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)

    def forward(self, x):
{in_forward}
        return self.conv(x)
"""

ENDINGS = {
    "sys.exit": ("sys.exit(3)", "calls sys.exit(3)"),
    "os._exit": ("os._exit(7)", "calls os._exit(7)"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", "raises KeyboardInterrupt itself"),
    "SystemExit": ("raise SystemExit('bye')", "calls sys.exit('bye')"),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
@pytest.mark.parametrize("device, ran", [("cuda", 0), ("all", RULES)])
def test_cuda_items_are_skipped_without_cuda(pytester: pytest.Pytester, device: str, ran: int) -> None:
    pytester.makepyfile(clean=CLEAN)
    result = pytester.runpytest("--cnncheck", "--cnncheck-device", device, "-rs", "-p", "no:randomly")
    assert "INTERNALERROR" not in result.stdout.str()
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped") == RULES and outcomes.get("passed", 0) == ran, outcomes
    result.stdout.fnmatch_lines([f"SKIPPED [[]{RULES}[]] clean.py:5: CUDA is not available on this machine"])


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("where", ["at-import", "in-forward"])
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist-loadfile"])
def test_code_that_ends_the_process_fails_alone(pytester: pytest.Pytester, ending: str, where: str,
                                                 xdist: bool) -> None:
    if xdist:
        pytest.importorskip("xdist")
    code, said = ENDINGS[ending]
    source = NET.format(at_import=code if where == "at-import" else "",
                        in_forward=f"        {code}" if where == "in-forward" else "")
    pytester.makepyfile(quits=source, clean=CLEAN)
    args = ["--cnncheck", "-p", "no:randomly", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*args, *(["-n", "2", "--dist", "loadfile"] if xdist else []))
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "no tests ran" not in text, text
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == RULES, outcomes  # the clean file, all checked
    assert outcomes.get("failed") == 1, outcomes  # the file that ends the process: one failure that says so
    assert said in text, text
    if where == "at-import":
        assert "quits.py, while it is imported, " + said in text
    else:
        assert "Quits " + said in text


@pytest.mark.parametrize("name", ["quits.py", "test_quits.py"])
def test_a_file_named_on_the_command_line_that_ends_the_process_fails_alone(pytester: pytest.Pytester,
                                                                           name: str) -> None:
    """pytest imports a file given as an argument (and a test file) itself: the exit is contained there."""
    (pytester.path / name).write_text(NET.format(at_import="os._exit(7)", in_forward=""))
    pytester.makepyfile(clean=CLEAN)
    result = pytester.runpytest_subprocess("--cnncheck", name, "clean.py", "-p", "no:randomly")
    assert result.parseoutcomes().get("passed") == RULES and result.parseoutcomes().get("failed") == 1
    assert f"{name}, while it is imported, calls os._exit(7)" in result.stdout.str()


def test_a_model_file_named_on_the_command_line_that_does_not_import_is_one_error_item(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(broken="import nonexistent_module\n", clean=CLEAN)
    result = pytester.runpytest("--cnncheck", "broken.py", "clean.py", "-p", "no:randomly")
    result.assert_outcomes(passed=RULES, failed=1)
    result.stdout.fnmatch_lines(["*cannot import broken.py: ModuleNotFoundError: No module named 'nonexistent_module'"])


NOT_EXCEPTIONS = {  # what no `except Exception` stops: (the code, what the failure says it did)
    "BaseException-subclass": ("raise type('Boom', (BaseException,), {})('x')", "raises Boom: x"),
    "GeneratorExit": ("raise GeneratorExit", "raises GeneratorExit"),
}


@pytest.mark.parametrize("raised", NOT_EXCEPTIONS)
@pytest.mark.parametrize("where", ["at-import", "in-forward"])
def test_a_base_exception_that_is_not_an_exception_fails_its_model_alone(pytester: pytest.Pytester, raised: str,
                                                                         where: str) -> None:
    """In a file found in a folder (not named on the command line), it used to stop the collection
    ("Interrupted: 1 error during collection"); in forward, it failed every rule item with a traceback."""
    code, said = NOT_EXCEPTIONS[raised]
    subs = pytester.mkdir("subs")
    (subs / "quits.py").write_text(NET.format(at_import=code if where == "at-import" else "",
                                              in_forward=f"        {code}" if where == "in-forward" else ""))
    (subs / "clean.py").write_text(CLEAN)
    result = pytester.runpytest("--cnncheck", "subs", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider")
    text = result.stdout.str()
    assert "Interrupted" not in text and "Traceback" not in text, text
    reason = f"{said} (a BaseException, not an Exception)"
    if where == "at-import":
        result.assert_outcomes(passed=RULES, failed=1)  # the clean file, all checked; one item for quits.py
        result.stdout.fnmatch_lines([f"cannot import quits.py: quits.py, while it is imported, {reason}"])
    else:
        others = RULES - 1  # the model's other rule items point at the one failure
        result.assert_outcomes(passed=RULES, failed=1, skipped=others)
        result.stdout.fnmatch_lines([f"Quits {reason}", f"SKIPPED [[]{others}[]] subs/quits.py:*: Quits could not "
                                     f"be checked; the reason is reported by subs/quits.py::Quits::*"])


CTRL_C = {  # the user's Ctrl-C (a SIGINT) arrives while a file is imported
    "left-alone": "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(10)",
    "turned-into-GeneratorExit": ("try:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(10)\n"
                                  "except KeyboardInterrupt:\n    raise GeneratorExit"),
}


@pytest.mark.parametrize("code", CTRL_C.values(), ids=CTRL_C)
def test_a_ctrl_c_while_a_file_is_imported_still_interrupts_the_run(pytester: pytest.Pytester, code: str) -> None:
    """A Ctrl-C is the user's, not the code's own exception, even when the code turns it into another."""
    (pytester.mkdir("subs") / "quits.py").write_text(NET.format(at_import=f"import signal, time\n{code}", in_forward=""))
    result = pytester.runpytest_subprocess("--cnncheck", "subs", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.stdout.fnmatch_lines(["*! KeyboardInterrupt !*"])
    assert "error during collection" not in result.stdout.str()


def test_a_model_file_that_skips_itself_at_import_is_skipped(pytester: pytest.Pytester) -> None:
    """pytest.importorskip in a model file keeps its meaning: pytest's skip is no BaseException to contain."""
    subs = pytester.mkdir("subs")
    (subs / "needs_timm.py").write_text("import pytest\npytest.importorskip('no_such_module_here')\n" + CLEAN)
    (subs / "clean.py").write_text(CLEAN)
    result = pytester.runpytest("--cnncheck", "subs", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=RULES, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] subs/needs_timm.py:*: could not import 'no_such_module_here'*"])
