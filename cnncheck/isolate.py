"""Check student code in worker processes, never in the caller's.

One worker imports a file and lists its models; then each model is checked in a fresh worker of its
own. Workers are forked from a server that has already imported torch and run one check
(``multiprocessing``'s forkserver), so a worker starts in about a tenth of a second. Every model has a time limit and the worker a memory limit; a file that hangs, calls
``sys.exit``, crashes the interpreter or exhausts memory becomes an error result with the reason, and
the other files are still checked.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnncheck.frames import traceback_location
from cnncheck.results import ModelResult
from cnncheck.sandbox import Confinement, Plan

_CONTEXT_LOCK = threading.Lock()
_CONTEXT: Any = None
_SERVER_PLAN: Plan | None = None  # the sandbox view the running fork server has, None outside one


@dataclass(frozen=True)
class Job:
    """One file to check, with the options that apply to each model in it."""

    file: str  # a path, or "package.module" with ``only`` set (a module:attr target)
    only: str | None = None  # check just this model (path.py::Name, package.module:Name)
    input_shape: tuple[int, ...] | None = None
    device: str | None = None
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    disabled_plugins: tuple[str, ...] = ()
    timeout: float = 60.0
    max_memory: int | None = None  # bytes of data segment for the worker process
    threads: int | None = None  # torch threads in the worker (default: the cores shared among workers)
    first_only: bool = False  # list the file's models, check the first; the others get workers of their own
    unit: str | None = None  # the submission (folder or file) this file is part of; default: its folder
    cover: str | None = None  # the folder of submissions it is one of; default: the unit's parent
    confinement: Confinement | None = None  # set by check_files when the run is sandboxed
    drawn: bool = False  # also the layer table and data flow, for the HTML report
    sites: bool = False  # also where each conv, linear and pool was built, for the fixes (cnncheck.fixes)

    @property
    def no_model_id(self) -> str:
        return f"{self.file}::<no model>"

    @property
    def target_id(self) -> str:
        """The id of a row for this job before its models are known: ``file.py::<import>``,
        ``file.py::Name`` or ``package.module:Name``."""
        if self.only is None:
            return f"{self.file}::<import>"
        from cnncheck.discover import is_module_target

        return f"{self.file}:{self.only}" if is_module_target(self.file) else f"{self.file}::{self.only}"


@dataclass
class _Progress:
    discovered: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    results: list[ModelResult] = field(default_factory=list)
    protocol_error: bool = False
    listed: bool = False  # the worker sent its model list (maybe empty: a file without models)


def parse_size(text: str) -> int:
    """``512M``, ``4G``, ``2.5GB`` or a number of bytes."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write it like 512M or 4G") from None
    if value <= 0:
        raise ValueError(f"{text!r}: the memory limit must be positive")
    return int(value)


_WORKER_NAME = "cnncheck-worker"


def _without_main(get_preparation_data: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """multiprocessing runs the parent's ``__main__`` script again in every child it starts. Ours need
    nothing from it: a grading script without an ``if __name__ == "__main__"`` guard would run again in
    each worker, and in the sandbox the script is not even visible."""
    def prepared(name: str) -> dict[str, Any]:
        data = get_preparation_data(name)
        if name == _WORKER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    return prepared


def _context() -> Any:
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            from multiprocessing import spawn

            spawn.get_preparation_data = _without_main(spawn.get_preparation_data)  # type: ignore[assignment]
            if "forkserver" in multiprocessing.get_all_start_methods():
                _CONTEXT = multiprocessing.get_context("forkserver")
                _CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "cnncheck.api", "cnncheck.tamper",
                                                 "cnncheck._warmup"])
            else:  # no fork on this platform: a fresh interpreter per file
                _CONTEXT = multiprocessing.get_context("spawn")
        return _CONTEXT


def check_files(jobs: Iterable[Job], workers: int = 1,
                on_result: Callable[[ModelResult], None] | None = None,
                sandbox: str | None = None) -> list[ModelResult]:
    """Check every job's file in its own worker, ``workers`` at a time; results in job order.
    ``sandbox="bwrap"`` confines each worker to its own submission (see :mod:`cnncheck.sandbox`)."""
    jobs = list(jobs)
    lock = threading.Lock()
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    jobs = [job if job.threads else replace(job, threads=share) for job in jobs]
    if sandbox == "bwrap":
        from cnncheck import sandbox as bubblewrap

        view = _use_server(bubblewrap.plan(pair for pair in map(_unit_and_cover, jobs) if pair is not None))
        assert view is not None
        jobs = [replace(job, confinement=view.confinement(*(pair or (None, None))))
                for job, pair in zip(jobs, map(_unit_and_cover, jobs))]
    else:
        _use_server(None)
        jobs = [replace(job, confinement=None) for job in jobs]

    def supervise(job: Job) -> list[ModelResult]:
        results = _per_model(job)
        if on_result is not None:
            with lock:
                for result in results:
                    on_result(result)
        return results

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        per_file = list(pool.map(supervise, jobs))
    _REAPER.wait()
    return [result for results in per_file for result in results]


def _unit_and_cover(job: Job) -> tuple[str, str] | None:
    from cnncheck.discover import is_module_target

    if job.only is not None and is_module_target(job.file):
        local = _local_package(job.file)
        if local is None:
            return None  # an installed module: the environment is visible anyway
        return local, os.path.dirname(local)  # mypkg.models:Net from the current folder: that package
    unit = job.unit or os.path.dirname(os.path.abspath(job.file))
    return unit, job.cover or os.path.dirname(os.path.abspath(unit))


def _local_package(target: str) -> str | None:
    """The folder (or file) of ``package.module``'s top package when the current folder holds it, as the
    import will find it first; found without importing anything (no student code runs here)."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec(target.split(".")[0], [os.getcwd()])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return os.path.abspath(next(iter(spec.submodule_search_locations)))
    return os.path.abspath(spec.origin) if spec.origin else None


def _use_server(view: Plan | None) -> Plan | None:
    """A fork server with this sandbox view (or none): the running one if its view holds this one,
    else a new one; returns the view it has. The executable stays set, so that a server a submission
    killed is restarted in the same view."""
    global _SERVER_PLAN
    ctx = _context()
    if ctx.get_start_method() != "forkserver":
        if view is not None:
            from cnncheck.sandbox import SandboxUnavailable

            raise SandboxUnavailable("the sandbox needs the forkserver start method (Linux)")
        return None
    from multiprocessing import forkserver, spawn

    with _CONTEXT_LOCK:
        if view == _SERVER_PLAN or (view is not None and _SERVER_PLAN is not None and _SERVER_PLAN.covers_all(view)):
            return _SERVER_PLAN
        getattr(forkserver, "_forkserver")._stop()
        if view is None:
            spawn.set_executable(sys.executable)
        else:
            from cnncheck.sandbox import server_launcher

            spawn.set_executable(server_launcher(view, sys.executable))
        _SERVER_PLAN = view
        return view


def _per_model(job: Job) -> list[ModelResult]:
    """Each model in a worker of its own: the worker that imports the file lists its models and checks
    the first; every other model gets a fresh worker."""
    if job.only is not None:
        return _supervise(job).results
    first = _supervise(replace(job, first_only=True))
    results = list(first.results)
    if not first.labels:  # the file did not import, or did not get as far as listing its models
        return results
    for label in first.labels[1:]:
        results.extend(_supervise(replace(job, only=label)).results)
    return results


def _supervise(job: Job) -> _Progress:
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    try:
        process = _start(ctx, job, sender)
    except Exception as exc:  # no worker could be started: this job's row says so, the run goes on
        sender.close()
        receiver.close()
        progress = _Progress()
        progress.results.append(_error(job, job.target_id, "crash", f"cnncheck could not start a worker "
                                       f"({type(exc).__name__}: {exc})", 0.0))
        return progress
    sender.close()
    progress = _Progress()
    deadline = time.monotonic() + job.timeout
    started = time.perf_counter()
    finished = False
    try:
        while not finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop(process)
                current = _next_unfinished(progress) or job.target_id
                progress.results.append(_error(job, current, "timeout",
                                               f"timed out after {job.timeout:g} s (an endless loop, or a model "
                                               f"far too large for the example input?)", time.perf_counter() - started))
                break
            if not receiver.poll(min(remaining, 0.5)):
                if not process.is_alive() and not receiver.poll(0):
                    break
                continue
            try:
                message = receiver.recv_bytes(MAX_MESSAGE_BYTES)  # bytes, never unpickled
            except (EOFError, OSError):
                break
            try:
                finished = _accept(job, progress, message)
            except _ProtocolError as exc:  # a worker that sends what no worker of ours sends: its row says so
                _stop(process)
                current = _next_unfinished(progress) or job.target_id
                progress.results.append(_error(job, current, "protocol", f"the worker sent a message cnncheck "
                                               f"does not accept ({exc}); its results are not trusted",
                                               time.perf_counter() - started))
                progress.protocol_error = True
                break
    finally:
        receiver.close()
        if finished:  # its results are in: the next worker starts while the kernel tears this one down
            _REAPER.reap(process)
        else:
            _reap(process)
    if finished and not progress.listed and not progress.results:  # ours lists its models or reports why not
        progress.results.append(_error(job, job.target_id, "protocol", "the worker ended without listing "
                                       "its models or saying why it could not", time.perf_counter() - started))
    if finished and progress.discovered:  # "done" without every result it owed: no model goes missing
        for missing in [i for i in _expected_ids(job, progress) if i not in {r.id for r in progress.results}]:
            progress.results.append(_error(job, missing, "protocol", "the worker ended without sending this "
                                           "model's result", time.perf_counter() - started))
    if not finished and not progress.protocol_error and not any(r.error_kind == "timeout" for r in progress.results):
        current = _next_unfinished(progress) or job.target_id
        progress.results.append(_died(job, current, process.exitcode, time.perf_counter() - started))
    return progress


MAX_MESSAGE_BYTES = 16 << 20
"""The largest message a worker may send: a model's result with its findings is a few kilobytes."""


class _ProtocolError(Exception):
    pass


def _send(conn: Any, message: tuple[str, Any]) -> None:
    """The worker's side: JSON, so that the supervisor never runs what it receives."""
    conn.send_bytes(json.dumps(message, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace"))


def _accept(job: Job, progress: _Progress, message: bytes) -> bool:
    """Take one message of a worker into ``progress``; True when the worker says it is done. Only the
    shapes a worker of ours sends are accepted, and only results for ids of this job, each once: the
    worker runs student code, so its messages are untrusted data."""
    try:
        kind, payload = json.loads(message.decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise _ProtocolError("not a cnncheck message") from None
    if kind == "done" and payload is None:
        return True
    if kind == "discovered" and not progress.listed and isinstance(payload, list):
        pairs = [p for p in payload if isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p)]
        if len(pairs) != len(payload) or not all(_belongs(job, model_id) for model_id, _ in pairs):
            raise _ProtocolError("a model list with ids of another file")
        progress.discovered = [model_id for model_id, _ in pairs]
        progress.labels = [label for _, label in pairs]
        progress.listed = True
        return False
    if kind == "result" and isinstance(payload, dict):
        try:
            result = ModelResult.from_dict(payload)
        except Exception:
            raise _ProtocolError("a malformed result") from None
        allowed = {job.target_id, job.no_model_id} if not progress.listed else set(_expected_ids(job, progress))
        if result.id not in allowed or any(r.id == result.id for r in progress.results):
            raise _ProtocolError(f"a result for {result.id!r}, which this worker does not check")
        progress.results.append(result)
        return False
    raise _ProtocolError(f"an unexpected {str(kind)[:40]!r} message")


def _belongs(job: Job, model_id: str) -> bool:
    """Whether ``model_id`` names a model of this job's file (or module) at all."""
    return model_id.startswith((f"{job.file}::", f"{job.file}:"))


def _expected_ids(job: Job, progress: _Progress) -> list[str]:
    """The ids this worker may report: the first model of its file, or the one model it was given."""
    if job.first_only:
        return progress.discovered[:1]
    if job.only is not None:
        named = [i for i, label in zip(progress.discovered, progress.labels)
                 if label == job.only or label.startswith(f"{job.only}[")]  # a factory's variants
        return named or [job.target_id]
    return progress.discovered


def _start(ctx: Any, job: Job, sender: Any) -> Any:
    """A started worker; when the fork server has died (a submission can kill it), a second try, for
    which multiprocessing starts a new server."""
    try:
        process = ctx.Process(target=_worker, args=(job, sender), daemon=True, name=_WORKER_NAME)
        process.start()
    except (OSError, EOFError, ConnectionError):
        process = ctx.Process(target=_worker, args=(job, sender), daemon=True, name=_WORKER_NAME)
        process.start()
    return process


def _reap(process: Any) -> None:
    process.join(5)
    if process.is_alive():
        _stop(process)
    _kill_group(process)  # what the worker left running in its group


class _Reaper:
    """Workers that have sent all their results, ended in the background; ``wait`` returns once every
    one is gone, so that a run leaves no process behind."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cnncheck-reaper")
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def reap(self, process: Any) -> None:
        with self._lock:
            self._pending.append(self._pool.submit(_reap, process))

    def wait(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()


_REAPER = _Reaper()


def _next_unfinished(progress: _Progress) -> str | None:
    done = {r.id for r in progress.results}
    return next((model for model in progress.discovered if model not in done), None)


def _stop(process: Any) -> None:
    _kill_group(process)
    process.kill()
    process.join(5)


def _kill_group(process: Any) -> None:
    """The worker and every process it started in its group (the worker leads its own session)."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _error(job: Job, model_id: str, kind: str, message: str, seconds: float,
           location: str | None = None) -> ModelResult:
    name = model_id.rsplit("::", 1)[-1]
    return ModelResult(model_id, job.file, name, error=message, error_kind=kind, location=location,
                       seconds=seconds)


def _died(job: Job, model_id: str, exitcode: int | None, seconds: float) -> ModelResult:
    if exitcode is not None and exitcode < 0:
        import signal

        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        reason = "killed by SIGKILL (out of memory?)" if name == "SIGKILL" else f"crashed the interpreter ({name})"
        return _error(job, model_id, "crash", f"the worker {reason}", seconds)
    return _error(job, model_id, "exit", f"the code ended the worker process with exit code {exitcode} "
                  f"(os._exit?) before the check finished", seconds)


# -- the worker process --------------------------------------------------------------------------------
def _worker(job: Job, conn: Any) -> None:
    """Runs in the child: import the file, discover its models, check each, report each result."""
    _quiet()
    if job.confinement is not None:  # a session of its own, and from here on the sandbox's view
        from cnncheck.sandbox import confine

        try:
            confine(job.confinement, conn)
        except Exception as exc:  # never run a submission unconfined when the sandbox was asked for
            _send(conn, ("result", _error(job, job.target_id, "crash", f"cnncheck could not confine the worker "
                                          f"to the sandbox ({exc})", 0.0).to_dict()))
            _send(conn, ("done", None))
            return
    else:
        try:
            os.setsid()  # a session and group of its own: killing the group ends every child it starts
        except OSError:
            pass
    if job.max_memory:  # the hard limit too: a submission cannot raise the soft one back
        resource.setrlimit(resource.RLIMIT_DATA, (job.max_memory, job.max_memory))
    path = Path(job.file)
    start = time.perf_counter()
    import torch

    torch.set_num_threads(job.threads or 1)
    from cnncheck.discover import NoSuchModel, import_failure
    from cnncheck.exits import CodeExited

    try:
        _apply_plugins(job)
    except Exception as exc:  # cnncheck's own setup, before any student code: not the submission's fault
        reason = (f"the plugins given with --plugin cannot be loaded in the worker ({type(exc).__name__}: {exc}); "
                  f"a plugin among the submissions, or beside their folder, is hidden by the sandbox: install it, "
                  f"or put it on PYTHONPATH elsewhere")
        _send(conn, ("result", _error(job, job.target_id, "crash", reason, time.perf_counter() - start).to_dict()))
        _send(conn, ("done", None))
        return
    try:
        from cnncheck.discover import candidates, load_target, named_candidates
        from cnncheck.tamper import snapshot_before_submission

        # before the submission's code runs (the job's plugins, loaded just now, are not tampering)
        before = snapshot_before_submission(fresh=bool(job.plugins or job.disabled_plugins))

        if job.only is not None:
            found = named_candidates(job.file, job.only)
        else:
            module, path = load_target(job.file)
            found = candidates(module, path)
    except CodeExited as exc:
        _send(conn, ("result", _error(job, job.target_id, "exit", import_failure(path, exc),
                                    time.perf_counter() - start).to_dict()))
        _send(conn, ("done", None))
        return
    except NoSuchModel as exc:
        _send(conn, ("result", _error(job, job.target_id, "import", str(exc),
                                    time.perf_counter() - start).to_dict()))
        _send(conn, ("done", None))
        return
    except BaseException as exc:  # the student's file does not import
        _send(conn, ("result", _error(job, job.target_id, "import", import_failure(path, exc),
                                      time.perf_counter() - start, traceback_location(exc)).to_dict()))
        _send(conn, ("done", None))
        return
    from cnncheck.discover import is_test_file, no_model_reason

    if not found and job.only is None and not is_test_file(path):  # every file given a worker gets a row

        _send(conn, ("result", _error(job, job.no_model_id, "no-model", no_model_reason(module, path),
                                      time.perf_counter() - start).to_dict()))
        _send(conn, ("done", None))
        return
    _send(conn, ("discovered", [(c.id, c.label) for c in found]))
    for candidate in found[:1] if job.first_only else found:
        result = _check_one(job, candidate)
        tampered = before.changed()
        if tampered:  # a verdict computed by changed code is no verdict
            shown = ", ".join(tampered[:4]) + (f" and {len(tampered) - 4} more" if len(tampered) > 4 else "")
            result = _error(job, candidate.id, "tampered", f"the submission replaced what cnncheck checks with: "
                            f"{shown}; no verdict can be trusted", result.seconds)
        _send(conn, ("result", result.to_dict()))
    _send(conn, ("done", None))


def _check_one(job: Job, candidate: Any) -> ModelResult:
    from cnncheck.candidate import check_candidate

    return check_candidate(candidate, shape=job.input_shape, device=job.device, select=job.select, ignore=job.ignore,
                           drawn=job.drawn, sites=job.sites)


def _apply_plugins(job: Job) -> None:
    if not job.plugins and not job.disabled_plugins:
        return
    from cnncheck import plugins

    for module in job.plugins:
        plugins.register(module)
    for name in job.disabled_plugins:
        plugins.block(name)


def _quiet() -> None:
    """Student code may print: keep it out of the report (and the progress bar)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (lives as long as the worker)
