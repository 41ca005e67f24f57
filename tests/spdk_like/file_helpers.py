"""Files for the io_uring and file bdev tests: where to make them, and buffers that O_DIRECT
takes."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

from fastpath.devices.blk import IOVEC
from fastpath.spdk_like._file import _file_system

ROOT = Path(__file__).resolve().parents[2]
FILE_SIZE = 1 << 20


def file_system_of(directory: Path) -> str:
    """The type of the file system `directory` is on (ext4, tmpfs, ...)."""
    return _file_system(os.stat(directory).st_dev)


def scratch_directory(kinds: tuple[str, ...], candidates: list[Path]) -> Path | None:
    """A fresh directory under the first candidate on a file system of one of `kinds`, or
    None where there is none."""
    for candidate in candidates:
        if candidate.is_dir() and file_system_of(candidate) in kinds:
            directory = candidate / f"fastpath-file-{os.getpid()}-{time.monotonic_ns()}"
            directory.mkdir()
            return directory
    return None


def remove_directory(directory: Path) -> None:
    """Remove a scratch directory and its files."""
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


def make_file(directory: Path, size: int = FILE_SIZE, fill: int | None = None) -> Path:
    """disk.img in `directory`: `size` bytes of `fill`, or sparse (a hole) without one."""
    path = directory / "disk.img"
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write(bytes([fill]) * size)
    return path


def random_bytes(size: int, seed: int) -> bytes:
    """`size` bytes, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


class Buffers:
    """Page-aligned buffers (O_DIRECT needs them aligned) and the iovecs naming them, kept
    alive together until the test is done with the I/O."""

    def __init__(self):
        self.maps: list[mmap.mmap] = []
        self.iovecs: list[np.ndarray] = []

    def buffer(self, size: int, fill: bytes | None = None) -> np.ndarray:
        """A buffer of `size` bytes at a page boundary, zeros or `fill`."""
        m = mmap.mmap(-1, max(size, 1))
        self.maps.append(m)
        data = np.frombuffer(m, dtype=np.uint8)[:size]
        if fill is not None:
            data[:] = np.frombuffer(fill, dtype=np.uint8)
        return data

    def iovec(self, pieces: list[np.ndarray]) -> int:
        """The address of an IOVEC array naming `pieces`."""
        iov = np.zeros(len(pieces), dtype=IOVEC)
        for k, piece in enumerate(pieces):
            iov[k] = (piece.ctypes.data, len(piece))
        self.iovecs.append(iov)
        return iov.ctypes.data
