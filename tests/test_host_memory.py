"""spectrumkd.host_memory.release_freed_memory: freed heap memory goes back to the system.

Checked in a fresh interpreter (the heap is process-wide) by its resident memory: 1 MiB blocks,
heap-served once glibc's mmap threshold has risen past them, are freed while a 4 MiB block
allocated after them pins the heap's top, so plain ``free`` returns nothing; the call must
hand most of them back.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json
from spectrumkd.host_memory import release_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

libc.free(libc.malloc(16 * 2**20))  # freed from mmap: the threshold rises to 16 MiB
blocks = [libc.malloc(2**20) for _ in range(256)]  # now from the heap
for block in blocks:
    ctypes.memset(block, 1, 2**20)
pin = libc.malloc(4 * 2**20)  # above them (no free chunk fits it): the top stays in use
for block in blocks:
    libc.free(block)
before = resident_mib()
released = release_freed_memory()
print(json.dumps({"released": released, "before": before, "after": resident_mib()}))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_freed_heap_blocks_go_back_to_the_system():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["released"]
    assert result["before"] - result["after"] > 200  # of the 256 MiB freed
