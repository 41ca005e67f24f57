"""The file bdev: a regular file or a block device, read and written asynchronously through
io_uring, with O_DIRECT where the file system allows it."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from fastpath.spdk_like._uring import direct_io_alignment

# <linux/fs.h>: the logical block size of a block device (int).
_BLKSSZGET = 0x1268


@dataclass(frozen=True)
class BackingFile:
    """A file opened for a bdev. `fd` does the I/O: with O_DIRECT when `direct`, and then
    offsets and lengths must be multiples of `offset_alignment` and buffer addresses multiples
    of `memory_alignment` (both 1 for buffered I/O). `buffered_fd` reaches the same file
    without O_DIRECT, for I/O that is not so aligned (`fd` itself when not `direct`).
    `reason` says why I/O is buffered when it is."""

    path: str
    fd: int
    buffered_fd: int
    size: int
    direct: bool
    reason: str
    offset_alignment: int
    memory_alignment: int

    def close(self) -> None:
        """Close the file descriptors."""
        os.close(self.fd)
        if self.buffered_fd != self.fd:
            os.close(self.buffered_fd)


def open_backing_file(path: str, *, read_only: bool = False, direct: bool = True) -> BackingFile:
    """Open `path` (a regular file or a block device) for a bdev, with O_DIRECT if `direct` and
    the file system allows it: a file system that refuses O_DIRECT (EINVAL; tmpfs before Linux
    6.6) gets buffered I/O, and `reason` says so ("O_DIRECT not supported on tmpfs: buffered
    I/O"). OSError as os.open raises it otherwise."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    buffered_fd = os.open(path, flags)
    fd = -1
    try:
        info = os.fstat(buffered_fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise OSError(errno.EINVAL, f"{path}: neither a regular file nor a block device")
        size = os.lseek(buffered_fd, 0, os.SEEK_END)
        if not direct:
            return BackingFile(path, buffered_fd, buffered_fd, size, False,
                               "O_DIRECT not asked for: buffered I/O", 1, 1)
        try:
            fd = os.open(path, flags | os.O_DIRECT)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            reason = f"O_DIRECT not supported on {_file_system(info.st_dev)}: buffered I/O"
            return BackingFile(path, buffered_fd, buffered_fd, size, False, reason, 1, 1)
        memory, offset = _direct_io_alignment(fd, info)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.close(buffered_fd)
        raise
    return BackingFile(path, fd, buffered_fd, size, True, "", offset, memory)


def _direct_io_alignment(fd: int, info: os.stat_result) -> tuple[int, int]:
    # (memory, offset) alignment of O_DIRECT I/O: what the kernel reports (Linux 6.1), else
    # a block device's logical block size, else the file system's block size, which is a
    # multiple of the logical block size of the device under it.
    reported = direct_io_alignment(fd)
    if reported is not None:
        return reported
    if stat.S_ISBLK(info.st_mode):
        (logical,) = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))
        return logical, logical
    return info.st_blksize, info.st_blksize


def _file_system(device: int) -> str:
    # The type of the file system mounted from `device` (/proc/self/mountinfo: the third
    # field is major:minor, the type follows the " - " separator).
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields, _, tail = line.partition(" - ")
                if fields.split()[2] == wanted:
                    return tail.split()[0]
    except OSError:
        pass
    return "this file system"
