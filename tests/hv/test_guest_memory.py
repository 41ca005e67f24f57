"""GuestMemory: memfd regions with holes, bounds-checked translation, sharing by fd.

Each test names the rule it proves. The rules come from DESIGN.md ("every translation is
bounds-checked and may not cross a region; a failure is a per-request error, never a crash") and
from the vhost-user memory model (a region has a guest-physical base, a size, the front-end's
virtual base and an fd another process maps).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastpath.errors import GuestMemoryError
from fastpath.hv import PAGE_SIZE, REGION_DTYPE, GuestMemory, SharedRegion
from fastpath.testing import GuestDriver

MIB = 1 << 20
TOP = 1 << 64

# Two regions with a 1 MiB hole between them, and a third right after a second hole.
LAYOUT = [(0, MIB), (2 * MIB, 2 * MIB), (8 * MIB, MIB)]


@pytest.fixture
def memory():
    with GuestMemory(LAYOUT) as m:
        yield m


# --- Regions and holes -------------------------------------------------------------------------


def test_regions_are_listed_in_guest_physical_order_with_holes_kept(memory):
    assert [(r.guest_phys_addr, r.size) for r in memory.regions] == LAYOUT
    assert memory.size == sum(size for _, size in LAYOUT)


def test_layout_given_out_of_order_is_sorted_by_guest_physical_address():
    with GuestMemory(list(reversed(LAYOUT))) as m:
        assert [(r.guest_phys_addr, r.size) for r in m.regions] == LAYOUT


@pytest.mark.parametrize(
    "layout",
    [[(0, 0)], [(0, PAGE_SIZE + 1)], [(PAGE_SIZE // 2, PAGE_SIZE)], [(0, -PAGE_SIZE)]],
    ids=["empty", "size-not-whole-pages", "base-not-page-aligned", "negative-size"],
)
def test_region_that_is_not_whole_aligned_pages_is_refused(layout):
    with pytest.raises(GuestMemoryError):
        GuestMemory(layout)


def test_bytes_written_read_back_in_every_region(memory):
    for gpa, size in LAYOUT:
        memory.write(gpa, b"first")
        memory.write(gpa + size - 4, b"last")
        assert memory.read(gpa, 5) == b"first"
        assert memory.read(gpa + size - 4, 4) == b"last"


def test_regions_are_separate_memory_not_aliases(memory):
    memory.write(0, b"A" * 16)
    memory.write(2 * MIB, b"B" * 16)
    assert memory.read(0, 16) == b"A" * 16
    assert memory.translate(0) != memory.translate(2 * MIB)


# --- Translation of guest-physical addresses ---------------------------------------------------


def test_translate_gives_the_host_address_of_the_region_plus_offset(memory):
    for row in memory.table:
        gpa, size, host = int(row["guest_phys_addr"]), int(row["size"]), int(row["host_addr"])
        assert memory.translate(gpa) == host
        assert memory.translate(gpa + 123, 10) == host + 123
        assert memory.translate(gpa, size) == host
        assert memory.translate(gpa + size - 1, 1) == host + size - 1


def test_zero_length_range_at_a_mapped_address_translates(memory):
    assert memory.translate(MIB - 1, 0) == memory.translate(MIB - 1)


@pytest.mark.parametrize(
    "gpa, length",
    [
        (MIB - 8, 16),  # runs off the end of region 0 into the hole
        (MIB, 1),  # first byte of the hole
        (MIB + MIB // 2, 4),  # middle of the hole
        (2 * MIB - 1, 2),  # last byte of the hole into region 1
        (2 * MIB, 2 * MIB + 1),  # one byte more than region 1
        (4 * MIB - 1, 2),  # end of region 1 into the second hole
        (9 * MIB, 1),  # past the end of memory
        (9 * MIB - 1, 2),  # runs off the end of memory
        (0, 9 * MIB),  # covers every region and both holes
    ],
    ids=[
        "crosses-region-end",
        "hole-start",
        "hole-middle",
        "hole-into-region",
        "longer-than-region",
        "second-hole",
        "past-end",
        "crosses-memory-end",
        "spans-all",
    ],
)
def test_range_crossing_a_region_end_or_in_a_hole_is_refused(memory, gpa, length):
    with pytest.raises(GuestMemoryError):
        memory.translate(gpa, length)
    with pytest.raises(GuestMemoryError):
        memory.read(gpa, length)
    with pytest.raises(GuestMemoryError):
        memory.view(gpa, length)
    with pytest.raises(GuestMemoryError):
        memory.write(gpa, b"\0" * length)


def test_adjacent_regions_still_refuse_a_range_crossing_their_boundary():
    # Two memfds back-to-back in guest-physical space are two mappings anywhere in the host.
    with GuestMemory([(0, MIB), (MIB, MIB)]) as m:
        m.translate(MIB - 4, 4)
        m.translate(MIB, 4)
        with pytest.raises(GuestMemoryError):
            m.translate(MIB - 4, 8)


@pytest.mark.parametrize(
    "gpa, length",
    [
        (TOP - 1, 2),  # the sum wraps to 1
        (TOP - PAGE_SIZE, 2 * PAGE_SIZE),
        (16, TOP - 1),  # huge length from a mapped address
        (MIB - 1, TOP - MIB + 2),  # wraps back into region 0
        (TOP - 1, 1),
        (-1, 1),
        (0, -1),
    ],
    ids=["top-plus-2", "top-page", "huge-length", "wraps-to-region", "last-byte", "neg-gpa",
         "neg-length"],
)
def test_64_bit_overflow_of_gpa_plus_length_is_refused(memory, gpa, length):
    with pytest.raises(GuestMemoryError):
        memory.translate(gpa, length)


@pytest.mark.parametrize(
    "gpa, length", [(TOP, 1), (16, TOP)], ids=["gpa-2**64", "length-2**64"]
)
def test_range_beyond_64_bits_is_a_guest_memory_error_not_an_overflow(memory, gpa, length):
    # The same "not inside one region" answer as any other bad range, so that callers that
    # catch GuestMemoryError (a vhost-user back-end, say) do not see an OverflowError escape.
    with pytest.raises(GuestMemoryError):
        memory.translate(gpa, length)
    with pytest.raises(GuestMemoryError):
        memory.translate_user(gpa, length)
    with pytest.raises(GuestMemoryError):
        memory.view(gpa, length)


def test_region_at_the_top_of_the_address_space_translates_without_wrapping():
    with GuestMemory([(0, MIB), (TOP - MIB, MIB)]) as m:
        m.write(TOP - 4, b"top!")
        assert m.read(TOP - 4, 4) == b"top!"
        with pytest.raises(GuestMemoryError):
            m.translate(TOP - 4, 8)  # would wrap to guest-physical 0, which is mapped


@pytest.mark.parametrize(
    "layout",
    [[(TOP - PAGE_SIZE, 2 * PAGE_SIZE)], [(TOP, PAGE_SIZE)]],
    ids=["ends-past-2**64", "starts-at-2**64"],
)
def test_region_not_inside_the_64_bit_guest_physical_space_is_refused(layout):
    with pytest.raises(GuestMemoryError):
        GuestMemory(layout).close()


# --- Overlaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [[(0, 2 * MIB), (MIB, 2 * MIB)], [(0, MIB), (0, MIB)]],
    ids=["partial", "identical"],
)
def test_overlapping_regions_in_the_constructor_are_refused(layout):
    with pytest.raises(GuestMemoryError):
        GuestMemory(layout).close()


def test_overlapping_region_added_later_is_refused(memory):
    fd = os.dup(memory.regions[0].fd)
    try:
        for gpa in (MIB // 2, 3 * MIB, 8 * MIB + MIB // 2, MIB - PAGE_SIZE):
            with pytest.raises(GuestMemoryError):
                memory.add_region(SharedRegion(fd, gpa, MIB, user_addr=0), owns_fd=False)
        assert [(r.guest_phys_addr, r.size) for r in memory.regions] == LAYOUT
    finally:
        os.close(fd)


def test_region_overlapping_in_front_end_virtual_space_is_refused():
    with GuestMemory([(0, MIB)]) as src, GuestMemory() as m:
        fd = src.regions[0].fd
        m.add_region(SharedRegion(fd, 0, MIB, user_addr=0x7F00_0000_0000), owns_fd=False)
        with pytest.raises(GuestMemoryError):
            m.add_region(SharedRegion(fd, 4 * MIB, MIB, user_addr=0x7F00_0008_0000),
                         owns_fd=False)


def test_region_filling_a_hole_exactly_is_accepted(memory):
    with GuestMemory([(0, MIB)]) as src:
        memory.add_region(SharedRegion(os.dup(src.regions[0].fd), MIB, MIB, user_addr=0))
        memory.translate(MIB - 4, 4)
        memory.translate(MIB, MIB)
        with pytest.raises(GuestMemoryError):
            memory.translate(MIB - 4, 8)  # still two regions


def test_add_region_refuses_empty_and_unaligned_offset(memory):
    with GuestMemory([(0, MIB)]) as src:
        fd = src.regions[0].fd
        with pytest.raises(GuestMemoryError):
            memory.add_region(SharedRegion(fd, 16 * MIB, 0, 0), owns_fd=False)
        with pytest.raises(GuestMemoryError):
            memory.add_region(SharedRegion(fd, 16 * MIB, PAGE_SIZE, 0, mmap_offset=1),
                              owns_fd=False)


def test_add_region_starting_past_the_end_of_the_fd_is_refused(memory):
    with GuestMemory([(0, MIB)]) as src:
        with pytest.raises(GuestMemoryError):
            memory.add_region(SharedRegion(src.regions[0].fd, 16 * MIB, MIB,
                                           user_addr=0, mmap_offset=2 * MIB), owns_fd=False)


def test_remove_region_makes_its_addresses_untranslatable(memory):
    memory.remove_region(2 * MIB)
    with pytest.raises(GuestMemoryError):
        memory.translate(2 * MIB)
    assert [(r.guest_phys_addr, r.size) for r in memory.regions] == [LAYOUT[0], LAYOUT[2]]
    with pytest.raises(GuestMemoryError):
        memory.remove_region(2 * MIB)
    with pytest.raises(GuestMemoryError):
        memory.remove_region(MIB // 2)  # not the start of a region


# --- Front-end (user) addresses ----------------------------------------------------------------


def test_own_memory_shows_its_mapping_address_as_the_user_address(memory):
    for r, row in zip(memory.regions, memory.table, strict=True):
        assert r.user_addr == int(row["host_addr"])
        assert memory.translate_user(r.user_addr + 100, 10) == memory.translate(
            r.guest_phys_addr + 100, 10)
        assert memory.user_to_guest(r.user_addr + 100) == r.guest_phys_addr + 100


def test_translate_user_uses_the_front_ends_addresses_not_ours():
    user_bases = [0x7F00_0000_0000, 0x7F00_1000_0000]
    with GuestMemory([(0, MIB), (4 * MIB, MIB)]) as src:
        shared = [SharedRegion(os.dup(r.fd), r.guest_phys_addr, r.size, user_addr=u)
                  for r, u in zip(src.regions, user_bases, strict=True)]
        with GuestMemory.from_shared(shared) as peer:
            src.write(4 * MIB + 64, b"by-gpa")
            assert peer.read(4 * MIB + 64, 6) == b"by-gpa"
            hva = peer.translate_user(user_bases[1] + 64, 6)
            assert hva == peer.translate(4 * MIB + 64, 6)
            assert peer.user_to_guest(user_bases[1] + 64) == 4 * MIB + 64
            with pytest.raises(GuestMemoryError):
                peer.translate_user(user_bases[0] + MIB - 2, 4)  # crosses a region end
            with pytest.raises(GuestMemoryError):
                peer.translate_user(user_bases[0] + MIB, 1)  # hole in user space
            with pytest.raises(GuestMemoryError):
                peer.translate_user(0x1000, 1)
            with pytest.raises(GuestMemoryError):
                peer.translate_user(user_bases[1] + 16, TOP - 1)
            with pytest.raises(GuestMemoryError):
                peer.user_to_guest(user_bases[0] + MIB)


# --- Sharing with another process --------------------------------------------------------------


def _child_writes(regions: list[SharedRegion], payloads: list[tuple[int, bytes]]) -> None:
    peer = GuestMemory.from_shared(regions, owns_fds=False)
    for gpa, data in payloads:
        peer.write(gpa, data)
    peer.close()


def test_fds_can_be_mapped_by_another_process_and_writes_are_shared(memory):
    payloads = [(16, b"child-r0"), (2 * MIB + 4096, b"child-r1"), (9 * MIB - 8, b"child-r2")]
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child_writes, args=(memory.regions, payloads))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    for gpa, data in payloads:
        assert memory.read(gpa, len(data)) == data


def test_fds_passed_to_a_fresh_interpreter_map_the_same_bytes(memory):
    memory.write(2 * MIB + 10, b"parent")
    regions = [(r.fd, r.guest_phys_addr, r.size) for r in memory.regions]
    code = textwrap.dedent(f"""
        from fastpath.hv import GuestMemory, SharedRegion
        m = GuestMemory.from_shared([SharedRegion(fd, g, s, 0) for fd, g, s in {regions!r}],
                                    owns_fds=False)
        assert m.read({2 * MIB + 10}, 6) == b"parent", m.read({2 * MIB + 10}, 6)
        m.write({8 * MIB}, b"exec'd child")
    """)
    fds = tuple(fd for fd, _, _ in regions)
    done = subprocess.run([sys.executable, "-c", code], pass_fds=fds, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert memory.read(8 * MIB, 12) == b"exec'd child"


def test_from_shared_with_duplicated_fds_sees_the_same_bytes(memory):
    shared = [SharedRegion(os.dup(r.fd), r.guest_phys_addr, r.size, r.user_addr)
              for r in memory.regions]
    with GuestMemory.from_shared(shared) as peer:
        assert [(r.guest_phys_addr, r.size) for r in peer.regions] == LAYOUT
        peer.write(2 * MIB, b"written there")
        assert memory.read(2 * MIB, 13) == b"written there"
        memory.write(MIB - 4, b"back")
        assert peer.read(MIB - 4, 4) == b"back"
        # Distinct mappings of the same pages.
        assert peer.translate(0) != memory.translate(0)


def test_from_shared_honours_the_mmap_offset():
    with GuestMemory([(0, 4 * MIB)]) as src:
        src.write(2 * MIB, b"at-offset")
        region = SharedRegion(os.dup(src.regions[0].fd), 16 * MIB, MIB, 0, mmap_offset=2 * MIB)
        with GuestMemory.from_shared([region]) as peer:
            assert peer.read(16 * MIB, 9) == b"at-offset"


def test_close_closes_owned_fds_only():
    src = GuestMemory([(0, MIB)])
    owned_fd = src.regions[0].fd
    dup_fd = os.dup(owned_fd)
    peer = GuestMemory.from_shared([SharedRegion(dup_fd, 0, MIB, 0)], owns_fds=False)
    peer.close()
    os.fstat(dup_fd)  # still open: peer did not own it
    src.close()
    with pytest.raises(OSError):
        os.fstat(owned_fd)
    os.close(dup_fd)


# --- Zero-copy views and the region table ------------------------------------------------------


def test_view_is_zero_copy_and_writable(memory):
    v = memory.view(2 * MIB + 100, 32)
    assert v.dtype == np.uint8 and v.shape == (32,)
    assert v.ctypes.data == memory.translate(2 * MIB + 100, 32)
    v[:] = np.arange(32, dtype=np.uint8)
    assert memory.read(2 * MIB + 100, 32) == bytes(range(32))
    memory.write(2 * MIB + 100, b"\xff" * 4)
    assert list(v[:4]) == [255] * 4


def test_view_shares_memory_with_a_peer_mapping(memory):
    v = memory.view(8 * MIB, 8)
    shared = [SharedRegion(os.dup(r.fd), r.guest_phys_addr, r.size, 0) for r in memory.regions]
    with GuestMemory.from_shared(shared) as peer:
        peer.write(8 * MIB, b"peerpeer")
    assert v.tobytes() == b"peerpeer"


def test_read_is_a_copy(memory):
    memory.write(0, b"orig")
    copy = memory.read(0, 4)
    memory.write(0, b"new!")
    assert copy == b"orig"


def test_region_table_matches_regions(memory):
    table = memory.table
    assert table.dtype == REGION_DTYPE
    assert table.flags.c_contiguous
    assert len(table) == len(memory.regions)
    for row, r in zip(table, memory.regions, strict=True):
        assert int(row["guest_phys_addr"]) == r.guest_phys_addr
        assert int(row["size"]) == r.size
        assert int(row["user_addr"]) == r.user_addr
        assert int(row["host_addr"]) == memory.translate(r.guest_phys_addr)
    assert list(table["guest_phys_addr"]) == sorted(table["guest_phys_addr"])


def test_region_table_follows_add_and_remove(memory):
    with GuestMemory([(0, MIB)]) as src:
        memory.add_region(SharedRegion(os.dup(src.regions[0].fd), 5 * MIB, MIB, 0))
    assert list(memory.table["guest_phys_addr"]) == [0, 2 * MIB, 5 * MIB, 8 * MIB]
    memory.remove_region(0)
    assert list(memory.table["guest_phys_addr"]) == [2 * MIB, 5 * MIB, 8 * MIB]
    for row in memory.table:
        assert int(row["host_addr"]) == memory.translate(int(row["guest_phys_addr"]))


def test_mapping_at_names_the_region_holding_an_address(memory):
    assert memory.mapping_at(2 * MIB + 5) is memory.mapping_at(4 * MIB - 1)
    assert memory.mapping_at(0) is not memory.mapping_at(2 * MIB)
    with pytest.raises(GuestMemoryError):
        memory.mapping_at(MIB)


# --- Closing memory under a live queue ---------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_closing_memory_while_a_queue_exists_does_not_crash(packed):
    g = GuestDriver(packed=packed, size=16)
    dev = g.device()
    burst = dev.new_burst()
    avail = None if packed else g.avail_ring()  # raw views stay valid after close
    g.send(b"before close")
    assert dev.pop(burst) == 1
    assert burst.readable(0) == b"before close"
    g.memory.close()
    # The queue still holds its ring's mapping: pops, pushes and raw ring access are safe, and
    # buffers are now outside (empty) guest memory.
    assert dev.pop(burst) == 0
    dev.push(burst)
    g.desc[1] = g.desc[0]
    g.desc["addr"][1] = 2 * MIB
    g.desc["len"][1] = 64
    if packed:
        g.desc["flags"][1] = 1 << 7
    else:
        avail[2 + 1] = 1
        avail[1] = 2
    assert dev.pop(burst) == 1
    assert dev.errors == {"DescriptorOutsideMemory": 1}
    assert burst.error(0).__name__ == "DescriptorOutsideMemory"


def test_ring_stays_mapped_after_memory_is_closed_and_dropped():
    g = GuestDriver(size=16)
    dev = g.device()
    g.memory.close()
    del g
    gc.collect()
    burst = dev.new_burst()
    assert dev.pop(burst) == 0  # would touch unmapped pages if the ring had been unmapped


def test_chains_popped_before_close_stay_readable_in_another_region():
    # A popped chain's segments are host addresses in the buffer region. Closing (or removing
    # that region) must not unmap pages a popped chain still points at: a later gather or
    # scatter must not fault. Run in a child so that a fault is a failure, not a lost run.
    code = textwrap.dedent("""
        import gc
        from fastpath.testing import GuestDriver
        g = GuestDriver(hole=True, size=8)   # ring in region 0, buffers in region 1
        dev = g.device()
        burst = dev.new_burst()
        g.send(b"still here", writable=1)
        assert dev.pop(burst) == 1
        g.memory.close()
        gc.collect()
        data = burst.readable(0)
        burst.write(0, b"reply")
        print("ok", data)
    """)
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (
        f"reading a chain popped before GuestMemory.close() crashed the process "
        f"(rc {done.returncode}): {done.stderr[-2000:]}"
    )


# --- Found in review: fd ownership, peers that lie about sizes, the table the core reads -------


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_region_larger_than_its_file_is_refused_not_a_sigbus():
    fd = os.memfd_create("short")
    os.ftruncate(fd, 4096)
    memory = GuestMemory()
    with pytest.raises(GuestMemoryError, match="smaller"):
        memory.add_region(SharedRegion(fd, 0, 2 * 4096, user_addr=0x7000_0000), owns_fd=False)
    assert memory.regions == []
    os.close(fd)


def test_from_shared_that_fails_closes_every_fd_it_was_given():
    good = os.memfd_create("good")
    os.ftruncate(good, 4096)
    bad = os.memfd_create("bad")  # empty: too small for its region
    regions = [SharedRegion(good, 0, 4096, user_addr=0x7000_0000),
               SharedRegion(bad, 0x10000, 4096, user_addr=0x7100_0000)]
    with pytest.raises(GuestMemoryError):
        GuestMemory.from_shared(regions, owns_fds=True)
    gc.collect()
    assert not _fd_is_open(good) and not _fd_is_open(bad)


def test_a_failed_mapping_never_closes_someone_elses_fd():
    # Regression: a half-built mapping closed its fd again when collected, by then perhaps
    # reused by an unrelated file.
    fd = os.memfd_create("empty")
    with pytest.raises(GuestMemoryError):
        GuestMemory().add_region(SharedRegion(fd, 0, 4096, user_addr=0x7000_0000))
    gc.collect()
    os.close(fd)  # the failed add did not take ownership: this is the only close
    unrelated = os.memfd_create("unrelated")
    gc.collect()
    assert _fd_is_open(unrelated)
    os.close(unrelated)


def test_our_memfds_are_sealed_so_a_peer_cannot_shrink_them():
    memory = GuestMemory([(0, 1 << 20)])
    with pytest.raises(PermissionError):
        os.ftruncate(memory.regions[0].fd, 4096)
    memory.close()


def test_the_region_table_the_core_reads_is_read_only():
    memory = GuestMemory([(0, 1 << 20)])
    with pytest.raises(ValueError):
        memory.table["size"][0] = 1 << 40
    memory.close()


def _unsealed_memfd(size: int) -> int:
    fd = os.memfd_create("unsealed-peer-memory", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def test_memory_a_peer_cuts_short_reads_zeros_instead_of_killing_the_process():
    # A front-end that does not seal its memfd (DPDK's) can shrink it under the mapping; the
    # access past the new end would raise SIGBUS. It reads zeros, and the memory says so.
    fd = _unsealed_memfd(1 << 20)
    memory = GuestMemory.from_shared([SharedRegion(fd, 0, 1 << 20, 0x10000000)])
    memory.write(0x80000, b"before")
    assert not memory.faulted
    os.ftruncate(fd, 4096)
    assert memory.read(0x80000, 6) == bytes(6)
    assert memory.faulted
    assert memory.read(0, 4) == bytes(4)   # the whole region was replaced
    memory.close()


def test_sealed_memory_is_not_guarded_since_it_cannot_shrink():
    memory = GuestMemory([(0, 1 << 20)])
    fd = memory.regions[0].fd
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 4096)
    shared = GuestMemory.from_shared([SharedRegion(os.dup(fd), 0, 1 << 20, 0x10000000)])
    assert all(m.guard_slot is None for m in shared.mappings)
    shared.close()
    memory.close()


def test_a_fault_outside_guarded_memory_still_kills_the_process(tmp_path):
    # Only guarded ranges are forgiven: any other SIGBUS goes on to its usual end.
    script = (
        "import mmap, os\n"
        "from fastpath.hv import GuestMemory, SharedRegion\n"
        "fd = os.memfd_create('x'); os.ftruncate(fd, 1 << 20)\n"
        "guarded = GuestMemory.from_shared([SharedRegion(os.dup(fd), 0, 1 << 20, 1 << 30)])\n"
        "other = os.memfd_create('y'); os.ftruncate(other, 1 << 20)\n"
        "m = mmap.mmap(other, 1 << 20)\n"
        "os.ftruncate(other, 0)\n"
        "m[4096]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGBUS
