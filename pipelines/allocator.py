"""Keep freed large CPU tensors in the process's heap instead of handing them back to the OS at every free.

glibc's malloc serves each block above its mmap threshold (dynamic, at most 32 MB) with a fresh
``mmap`` and returns it with ``munmap`` when freed; the next allocation of the same size then
faults every page back in. A loop that allocates and frees the same 30-60 MB tensors each step
(the attack's per-slot distributions over the 49,408-token vocabulary: 50 prompts x 3 slots) pays
that every step: measured on 2 cores, a block of 30 attack steps spent 20.7 s in the kernel with
the default and 5.5 s with freed memory kept (``M_TRIM_THRESHOLD`` 1 GiB, the mmap threshold fixed
at its 32 MB maximum), the same arithmetic 10 % faster end to end. Peak RSS is unchanged (1.73 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 1 << 30  # free heap kept before trimming: enough for a few attack-sized tensors
MMAP_BYTES = 32 << 20  # glibc's upper limit for the threshold on 64-bit; fixing it also stops its drift

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds once per process (True where applied; False off glibc)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1 and libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _done = applied
    return applied
