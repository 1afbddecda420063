"""Keeping freed memory in the heap: applied once per process on glibc, a plain False elsewhere."""

from __future__ import annotations

import platform
import sys

from pipelines.allocator import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True  # both mallopt calls accepted their values
    elif not sys.platform.startswith("linux"):
        assert first is False
