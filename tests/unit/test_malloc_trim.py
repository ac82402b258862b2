"""The worker's periodic `malloc_trim`: free memory pinned inside glibc's heap by a few
live allocations goes back to the system."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import pytest

from streams.app import malloc_trim

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")

PAGE = 4096


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_free_pages_pinned_by_live_chunks_are_released() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 8 * PAGE  # below the mmap threshold: from the heap
    chunks = [libc.malloc(size) for _ in range(4096)]  # 128 MiB
    for chunk in chunks:
        libc.memset(chunk, 1, size)  # touched: resident
    kept = chunks[15::16]  # every 16th stays live, so the heap cannot shrink from the top
    for index, chunk in enumerate(chunks):
        if index % 16 != 15:
            libc.free(chunk)
    try:
        before = rss_bytes()
        malloc_trim()()
        released = before - rss_bytes()
        assert released > 64 * 1024 * 1024, released
    finally:
        for chunk in kept:
            libc.free(chunk)
