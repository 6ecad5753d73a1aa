"""Shared fixtures. torch is imported first: pytester's in-process runs restore sys.modules, and a C
extension imported for the first time inside such a run fails to load a second time."""

import os
import sys

import torch  # noqa: F401  (see the docstring)

sys.path.insert(0, os.path.dirname(__file__))
