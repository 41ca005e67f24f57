"""Fixtures of the spdk_like tests: directories for the files of io_uring and file bdevs."""

from pathlib import Path

import pytest
from file_helpers import ROOT, remove_directory, scratch_directory


@pytest.fixture
def disk_dir(tmp_path):
    """A directory on a file system with O_DIRECT and fallocate's modes (not tmpfs)."""
    directory = scratch_directory(("ext4", "xfs", "btrfs"),
                                  [tmp_path, Path("/var/tmp"), ROOT / "build"])
    if directory is None:
        pytest.skip("no ext4, xfs or btrfs directory here (tmp_path, /var/tmp, build/)")
    yield directory
    remove_directory(directory)


@pytest.fixture
def tmpfs_dir():
    """A directory on tmpfs (/dev/shm)."""
    directory = scratch_directory(("tmpfs",), [Path("/dev/shm")])
    if directory is None:
        pytest.skip("/dev/shm is not tmpfs here")
    yield directory
    remove_directory(directory)
