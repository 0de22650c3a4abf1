"""A tiny FUSE server (raw /dev/fuse protocol, no libfuse) that stands in for the sysfs `rom`
file of fake PCI devices.

Why not a plain file: the kernel's `/sys/bus/pci/devices/<bdf>/rom` only returns the expansion ROM
after "1" is written to it, and a write never changes the ROM (vbios_version.py writes "1", reads,
writes "0"). A plain file would be overwritten by that "1". This server gives the same semantics:
reads fail with EINVAL until "1" is written, then return the ROM image (re-read from SOURCE on every
open, so a test can swap the VBIOS), and writes only toggle the enable flag.

Usage (root, inside the host's mount namespace):
    romfs.py [--fifo] READY_FILE SOURCE=MOUNTPOINT [SOURCE=MOUNTPOINT...]
Each MOUNTPOINT is an existing regular file; it gets a FUSE mount whose root is that file. READY_FILE
is written once every mount is serving.

--fifo (fallback where /dev/fuse is missing): each MOUNTPOINT is a named pipe and a thread plays the
kernel's part for the exact sequence vbios_version.py uses: it reads what a writer sends, and after
"1" it writes the ROM to the next reader. Unlike sysfs, a read without "1" first blocks instead of
failing with EINVAL.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import stat
import struct
import sys
import time

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR = 1, 2, 3, 4
FUSE_OPEN, FUSE_READ, FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE = 14, 15, 16, 17, 18
FUSE_FSYNC, FUSE_FLUSH, FUSE_INIT, FUSE_INTERRUPT, FUSE_DESTROY = 20, 25, 26, 36, 38
FUSE_BATCH_FORGET = 42
NO_REPLY = {FUSE_FORGET, FUSE_INTERRUPT, FUSE_BATCH_FORGET}

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino size blocks a/m/ctime, nsecs, mode nlink uid gid rdev blksize flags
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("<QII")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
FOPEN_DIRECT_IO = 1
MAX_WRITE = 1 << 16
BUF_SIZE = MAX_WRITE + 64 * 1024

MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)


class RomFile:
    def __init__(self, source: str, mountpoint: str):
        self.source, self.mountpoint = source, mountpoint
        self.enabled = False
        self.image = b""
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=100600,user_id=0,group_id=0,allow_other".encode()
        if _libc.mount(b"tdxfake-rom", mountpoint.encode(), b"fuse", MS_NOSUID | MS_NODEV, opts) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount fuse on {mountpoint}: {os.strerror(e)}")

    def _load(self) -> bytes:
        try:
            with open(self.source, "rb") as fh:
                self.image = fh.read()
        except OSError:
            self.image = b""
        return self.image

    def _attr(self) -> bytes:
        now = int(time.time())
        size = len(self.image)
        return ATTR_OUT.pack(0, 0, 0) + ATTR.pack(
            1, size, (size + 511) // 512, now, now, now, 0, 0, 0, stat.S_IFREG | 0o600, 1, 0, 0, 0, 4096, 0
        )

    def _reply(self, unique: int, error: int = 0, payload: bytes = b"") -> None:
        body = b"" if error else payload
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), -error, unique) + body)
        except OSError as exc:  # the request was interrupted/aborted: nothing to do
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise

    def handle(self) -> bool:
        try:
            req = os.read(self.fd, BUF_SIZE)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                return True
            if exc.errno == errno.ENODEV:  # unmounted
                return False
            raise
        if not req:
            return False
        _len, opcode, unique, _node, *_ = IN_HEADER.unpack_from(req)
        arg = req[IN_HEADER.size :]
        if opcode in NO_REPLY:
            return True
        if opcode == FUSE_INIT:
            _major, _minor, readahead, _flags = INIT_IN.unpack_from(arg)
            self._reply(unique, 0, INIT_OUT.pack(7, 31, readahead, 0, 0, 0, MAX_WRITE, 1, 0, 0, 0, 0))
        elif opcode in (FUSE_GETATTR, FUSE_SETATTR):
            self._load()
            self._reply(unique, 0, self._attr())  # truncation (O_TRUNC) is ignored, like sysfs
        elif opcode == FUSE_OPEN:
            self._load()
            self._reply(unique, 0, OPEN_OUT.pack(1, FOPEN_DIRECT_IO, 0))
        elif opcode == FUSE_READ:
            _fh, offset, size, *_ = READ_IN.unpack_from(arg)
            if not self.enabled:  # the kernel answers EINVAL until "1" is written
                self._reply(unique, errno.EINVAL)
            else:
                self._reply(unique, 0, self.image[offset : offset + size])
        elif opcode == FUSE_WRITE:
            _fh, _offset, size, *_ = WRITE_IN.unpack_from(arg)
            data = arg[WRITE_IN.size : WRITE_IN.size + size]
            if data:
                self.enabled = data[:1] != b"0"
            self._reply(unique, 0, WRITE_OUT.pack(size, 0))
        elif opcode in (FUSE_FLUSH, FUSE_RELEASE, FUSE_FSYNC):
            self._reply(unique, 0)
        elif opcode == FUSE_DESTROY:
            self._reply(unique, 0)
            return False
        elif opcode == FUSE_LOOKUP:
            self._reply(unique, errno.ENOENT)
        else:
            self._reply(unique, errno.ENOSYS)
        return True


def serve_fifo(source: str, path: str) -> None:
    while True:
        with open(path, "rb") as pipe:  # blocks until a writer opens it
            data = pipe.read()
        if data[:1] in (b"", b"0"):
            continue
        try:
            with open(source, "rb") as fh:
                image = fh.read()
            with open(path, "wb") as pipe:  # blocks until the reader opens it
                pipe.write(image)
        except (BrokenPipeError, OSError):
            pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["--fifo"]:
        import threading

        threads = [
            threading.Thread(target=serve_fifo, args=tuple(spec.split("=", 1)), daemon=True) for spec in argv[2:]
        ]
        for t in threads:
            t.start()
        with open(argv[1], "w") as fh:
            fh.write(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        for t in threads:
            t.join()
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    files = [RomFile(*spec.split("=", 1)) for spec in argv[1:]]
    by_fd = {f.fd: f for f in files}
    with open(argv[0], "w") as fh:
        fh.write(f"{os.getpid()}\n")
    while by_fd:
        ready, _, _ = select.select(list(by_fd), [], [])
        for fd in ready:
            if not by_fd[fd].handle():
                del by_fd[fd]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
