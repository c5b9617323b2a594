"""``python -m torchtroupe info``: what this machine offers torchtroupe."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys

import torch
import torch.multiprocessing

from . import __version__
from ._settings import SETTINGS
from .transport.core import IMPLEMENTATION
from .transport.fence import STORES_ARE_ORDERED
from .transport.waiting import AUTOMATIC_SPIN_US, usable_cores


def describe() -> list[tuple[str, str]]:
    """Name/value pairs describing versions, start method and system limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        shm = shutil.disk_usage("/dev/shm")
        shm_text = f"{shm.total / 2**30:.1f} GiB ({shm.free / 2**30:.1f} GiB free)"
    except OSError:
        shm_text = "not mounted"
    cuda = (
        f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "not available"
    )
    return [
        ("torchtroupe", __version__),
        ("python", sys.version.split()[0]),
        ("torch", torch.__version__),
        ("cuda", cuda),
        ("platform", f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"),
        ("memory ordering", "TSO (x86-64)" if STORES_ARE_ORDERED else "weak (fences on publish)"),
        ("default start method", "forkserver (torch preloaded)"),
        ("sharing strategy", torch.multiprocessing.get_sharing_strategy()),  # type: ignore[no-untyped-call]
        ("/dev/shm", shm_text),
        ("open file limit", f"{soft} (hard {hard})"),
        ("ring core", f"{IMPLEMENTATION} (TORCHTROUPE_NATIVE)"),
        ("spin before parking", _spin_text()),
        ("ring size", f"{SETTINGS.ring_bytes} bytes (TORCHTROUPE_RING_BYTES)"),
    ]


def _spin_text() -> str:
    if SETTINGS.spin_us is not None:
        return f"{SETTINGS.spin_us:g} µs (TORCHTROUPE_SPIN_US)"
    return (
        f"{AUTOMATIC_SPIN_US:g} µs while a group's ranks and caller fit on the "
        f"{usable_cores()} usable cores, else none (TORCHTROUPE_SPIN_US unset)"
    )


def print_info() -> None:
    """Prints :func:`describe` as an aligned table."""
    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
