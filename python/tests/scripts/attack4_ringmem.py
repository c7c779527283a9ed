"""A view of a Queue's ring (its sealed memfd) from Python, for the attack tests: the
words of `crates/procpool-py/src/ring.rs`'s layout, read and written in place."""

import mmap
import struct

SLOTS = 4096
SLOT = 256
SIZE = 4096 + SLOTS * SLOT
TAIL, HEAD, OWNER, INFLIGHT, RSLEEP, WSLEEP = 64, 128, 192, 200, 260, 324


class RingMem:
    def __init__(self, q):
        self.m = mmap.mmap(q._ring.fileno(), SIZE)

    def u64(self, off):
        return struct.unpack_from("<Q", self.m, off)[0]

    def u32(self, off):
        return struct.unpack_from("<I", self.m, off)[0]

    def set_u64(self, off, v):
        struct.pack_into("<Q", self.m, off, v & (2**64 - 1))

    def set_u32(self, off, v):
        struct.pack_into("<I", self.m, off, v & (2**32 - 1))

    def slot_at(self, pos):
        return 4096 + (pos % SLOTS) * SLOT

    @property
    def holder_pid(self):
        return self.u64(OWNER) >> 32

    def close(self):
        self.m.close()
