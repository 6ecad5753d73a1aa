"""Student code that tries to end the process: ``sys.exit``, ``os._exit``, a ``KeyboardInterrupt`` it
raises itself, or any other exception that is not an ``Exception`` (``GeneratorExit``, a class derived
from ``BaseException``), which no ``except Exception`` stops either. Inside :func:`contained_exits` each
becomes :class:`CodeExited`, an ordinary exception that says what the code did, so that only the file
or model it came from fails, and the other checks of the run go on. A Ctrl-C from the user still
interrupts the run."""

from __future__ import annotations

import os
import posix
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class CodeExited(Exception):
    """Student code called ``sys.exit``/``os._exit``, raised ``KeyboardInterrupt`` itself, or raised
    another exception that is not an ``Exception``: ``raised`` (None for an exit)."""

    def __init__(self, message: str, raised: BaseException | None = None) -> None:
        super().__init__(message)
        self.raised = raised


class _OsExit(SystemExit):
    """``os._exit(code)`` refused: no ``Exception``, so that the student's ``except Exception`` lets it by,
    and a ``SystemExit``, which pytest's collection lets through to :func:`contained_exits` too."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def contained_exits(what: str) -> Iterator[None]:
    """Run student code; ``what`` ("model.py while it is imported") names it in the message."""
    interrupted = False
    previous_handler: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        if callable(previous_handler):
            previous_handler(signum, frame)
        raise KeyboardInterrupt

    def refuse_exit(code: int) -> None:
        raise _OsExit(code)

    if in_main_thread:
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    real_exit = os._exit
    os._exit = posix._exit = refuse_exit  # type: ignore[assignment]
    try:
        yield
    except _OsExit as exc:
        raise CodeExited(f"{what} calls os._exit({exc.code!r})") from None
    except SystemExit as exc:
        raise CodeExited(f"{what} calls sys.exit({exc.code!r})") from None
    except KeyboardInterrupt:
        if interrupted:
            raise
        raise CodeExited(f"{what} raises KeyboardInterrupt itself") from None
    except Exception:
        raise
    except BaseException as exc:  # GeneratorExit, class Boom(BaseException): past every except Exception
        if interrupted:  # the user's Ctrl-C, which the code turned into another exception
            raise KeyboardInterrupt from exc
        said = f": {exc}" if str(exc) else ""
        raise CodeExited(f"{what} raises {type(exc).__name__}{said} (a BaseException, not an Exception)",
                         raised=exc) from None
    finally:
        os._exit = posix._exit = real_exit
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
