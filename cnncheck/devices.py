"""Whether a device a user asks for can run a check here: one answer for the command and the plugin."""

from __future__ import annotations


def device_problem(text: str) -> str | None:
    """Why ``text`` (``--device``) cannot be checked on here, as one line naming the fix; None if it can."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f"--device {text!r} is not a device torch knows: use cpu, cuda, cuda:N or mps"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {text}: CUDA is not available on this machine; leave --device out to check on the CPU"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {text}: MPS (Apple's GPU) is not available on this machine; use cpu"
    try:
        torch.ones(1, device=device).add(1).item()  # meta tensors hold no values; a missing backend raises
    except (RuntimeError, NotImplementedError) as exc:
        reason = str(exc).splitlines()[0].split(". ")[0]
        return f"--device {text}: cannot compute on it here ({reason}); use cpu"
    return None
