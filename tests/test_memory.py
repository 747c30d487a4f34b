"""runner.memory: the C allocator of a CLI process (glibc): few arenas, free memory handed back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


ARENAS = """
import ctypes, os, sys, tempfile, threading
import runner.cli
barrier = threading.Barrier(8)
def work():
    held = [bytearray(300_000) for _ in range(4)]  # malloc'ed in this thread's arena
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL(None)
libc.fdopen.restype = ctypes.c_void_p
fd, path = tempfile.mkstemp()
fp = libc.fdopen(fd, b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fflush(ctypes.c_void_p(fp))
print(open(path).read().count("<heap nr="))
"""


def test_the_cli_caps_malloc_arenas_unless_the_user_chose_a_number() -> None:
    def arenas(**env: str) -> int:
        base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        return int(subprocess.run([sys.executable, "-c", ARENAS], env={**base, **env}, capture_output=True,
                                  text=True, check=True).stdout)

    assert arenas() <= 2
    assert arenas(MALLOC_ARENA_MAX="8") > 2  # threads get arenas of their own without the cap


TRIM = """
import ctypes
from runner import memory
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = []
for _ in range(600):  # 100 KB blocks come from the heap, one after another
    block = libc.malloc(100_000)
    ctypes.memset(block, 1, 100_000)
    blocks.append(block)
for block in blocks[::2]:  # every other one: free, but between two held ones
    libc.free(block)
before = rss()
memory.trim(every=0)
print(before, rss())
"""


def test_trim_hands_free_heap_memory_back() -> None:
    before, after = map(int, subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert before - after >= 20, (before, after)  # ~30 MB were free but resident
