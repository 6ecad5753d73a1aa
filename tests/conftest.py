"""Shared fixtures. torch and every cnncheck module are imported first: pytester's in-process runs
restore sys.modules, so a module imported for the first time inside such a run is imported again by
the next test, and two copies of a class then disagree (``pytest.raises(cnncheck.CheckFailed)`` no longer
catches the ``CheckFailed`` that ``cnncheck.api`` raises); a C extension, or torch._dynamo's registries,
cannot load twice at all."""

import importlib
import os
import pkgutil
import sys

import pytest
import torch  # (see the docstring)
import torch._dynamo  # noqa: F401  (torch.compile's, imported in a pytester run it cannot load twice)

import cnncheck

for _module in pkgutil.walk_packages(cnncheck.__path__, "cnncheck."):
    if _module.name not in ("cnncheck.__main__", "cnncheck._warmup"):
        importlib.import_module(_module.name)

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Seed torch, and run on one thread: the test models are tiny, and thread start-up costs more
    than the work on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
