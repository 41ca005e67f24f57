"""Guest memory on 2 MiB huge pages (memfd with MFD_HUGETLB), when the host can give them."""

import os
from pathlib import Path

import pytest

from fastpath.errors import GuestMemoryError
from fastpath.hv import HUGE_PAGE_SIZE, GuestMemory
from fastpath.vring import SplitDeviceQueue, SplitDriverQueue, ring_layout

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
PAGES = 4


def _free_huge_pages() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("HugePages_Free:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def huge_pages():
    """Make PAGES huge pages free for the test (root only), and put the setting back after."""
    before = int(NR_HUGEPAGES.read_text())
    if _free_huge_pages() >= PAGES:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("no free huge pages and not root to reserve some")
    try:
        NR_HUGEPAGES.write_text(str(before + PAGES))
    except OSError as e:  # a read-only /proc/sys, as in a container
        pytest.skip(f"cannot reserve huge pages: {e}")
    try:
        if _free_huge_pages() < PAGES:
            pytest.skip("the host could not reserve huge pages")
        yield
    finally:
        NR_HUGEPAGES.write_text(str(before))


def test_hugetlb_memory_translates_and_serves_a_ring(huge_pages):
    memory = GuestMemory([(0, HUGE_PAGE_SIZE), (4 * HUGE_PAGE_SIZE, HUGE_PAGE_SIZE)], hugetlb=True)
    memory.write(4 * HUGE_PAGE_SIZE + 100, b"huge")
    assert memory.read(4 * HUGE_PAGE_SIZE + 100, 4) == b"huge"
    assert memory.translate(HUGE_PAGE_SIZE - 1) - memory.translate(0) == HUGE_PAGE_SIZE - 1
    with pytest.raises(GuestMemoryError):
        memory.translate(HUGE_PAGE_SIZE, 1)
    rings = ring_layout(64, 0x1000, packed=False)
    driver = SplitDriverQueue(memory, 64, rings)
    device = SplitDeviceQueue(memory, 64, rings)
    driver.add(readable=[(4 * HUGE_PAGE_SIZE + 100, 4)])
    burst = device.new_burst()
    assert device.pop(burst) == 1 and burst.readable(0) == b"huge"
    memory.close()


def test_hugetlb_regions_must_be_whole_huge_pages():
    with pytest.raises(GuestMemoryError, match="pages"):
        GuestMemory([(0, 4096)], hugetlb=True)
