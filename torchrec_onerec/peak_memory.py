"""Peak memory of one stretch of work (a pipeline stage) in this process: host RSS and, with CUDA, device memory.

On Linux the kernel's high-water mark of the resident set (``VmHWM``) can be reset by writing ``5`` to
``/proc/self/clear_refs``, so ``reset_peak_memory`` then ``peak_memory`` measure the stage alone. Where that is
not possible (another OS, a restricted /proc) the host figure is the process's peak so far
(``resource.getrusage``), and ``host_scope`` says so. Memory of DataLoader worker processes is not counted.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Dict, Union

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _high_water_kib() -> int:
    """VmHWM of /proc/self/status in KiB (-1 when it cannot be read)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak_memory() -> bool:
    """Start a new measurement: reset the host high-water mark (where the OS allows it) and CUDA's peak stats.
    Returns whether the host mark was reset (else ``peak_memory`` reports the process's peak so far)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _high_water_kib() >= 0


def peak_memory(since_reset: bool) -> Dict[str, Union[float, str]]:
    """Peak memory since ``reset_peak_memory`` (whose result is ``since_reset``), in MiB.

    Returns:
        ``host_peak_mib`` (resident set), ``host_scope`` (``since_reset`` or ``process``: the process's peak so
        far) and, when CUDA is available, ``cuda_peak_mib`` (tensors allocated on the current device).

    Example:
        >>> peaks = peak_memory(reset_peak_memory())
        >>> peaks["host_peak_mib"] > 0, peaks["host_scope"] in ("since_reset", "process")
        (True, True)
    """
    kib, scope = (_high_water_kib() if since_reset else -1), "since_reset"
    if kib < 0:  # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib, scope = (rss // 1024 if sys.platform == "darwin" else rss), "process"
    peaks: Dict[str, Union[float, str]] = {"host_peak_mib": round(kib / 1024, 1), "host_scope": scope}
    if torch.cuda.is_available():
        peaks["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks
