"""Shared fixtures. torch is imported first: pytester's in-process runs restore sys.modules, and a C
extension imported for the first time inside such a run fails to load a second time."""

import os
import sys

import pytest
import torch  # (see the docstring)

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
