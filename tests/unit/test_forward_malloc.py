"""map_large_buffers_apart: blocks the size of a TLS read buffer get their own mapping."""

from __future__ import annotations

import subprocess
import sys

import pytest

from localmesh.forward.limits import MMAP_THRESHOLD

# In a fresh interpreter: free a 4 MiB block (glibc then raises its mmap threshold to match),
# then print how many of 64 live 256 KiB blocks malloc mapped on their own.
PROBE = """
import ctypes, sys
from localmesh.forward.limits import map_large_buffers_apart

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "apart":
    assert map_large_buffers_apart()
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
blocks = [libc.malloc(SIZE) for _ in range(64)]
print(libc.mallinfo2().hblks - before)
for block in blocks:
    libc.free(block)
""".replace("SIZE", str(MMAP_THRESHOLD))


def mapped_blocks_added(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_a_tls_sized_block_gets_its_own_mapping_only_when_asked() -> None:
    assert mapped_blocks_added("default") == 0  # glibc's own choice: the heap
    assert mapped_blocks_added("apart") >= 60  # a few may reuse free heap chunks
