"""The compiled controller held to the plain-Python oracle (fastpath.testing.reference.nvme)
over random mixes of commands: good and hostile data pointers, PRPs and SGLs the host builds,
ranges in and out of the namespace, unknown opcodes and namespaces, in one batch on one queue
(so that both carry them out in submission order), completions in or out of order."""

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nvme_helpers import Rig, command, status_of

from fastpath.spdk_like._nvme_dptr import build_data_pointer
from fastpath.spdk_like._nvme_layout import (
    CDW11_AD,
    CDW12_DEAC,
    DSM_RANGE,
    NSID_ALL,
    NVM_DATASET_MANAGEMENT,
    NVM_FLUSH,
    NVM_READ,
    NVM_WRITE,
    NVM_WRITE_ZEROES,
    PAGE_SIZE,
    SQE,
)
from fastpath.testing.reference.nvme import NvmeReference

BLOCKS = 1024
BLOCK = 512


@pytest.fixture(scope="module")
def rig():
    rig = Rig(blocks=BLOCKS, block_size=BLOCK, memory_size=16 << 20)
    rig.pair = rig.driver.create_queue_pair(64)
    return rig


# Mostly within the namespace, some at its end, a few far past it...
slbas = st.one_of(st.integers(0, BLOCKS - 64), st.integers(0, BLOCKS - 64),
                  st.integers(BLOCKS - 8, BLOCKS + 8), st.just((1 << 64) - 1))


def extents(blocks):
    """(slba, blocks): anywhere, or ending one block before, at or one past the end."""
    ending = st.builds(lambda k, d: (BLOCKS - k, max(1, k + d)), st.integers(1, 16),
                       st.integers(-1, 1))
    return st.one_of(st.tuples(slbas, blocks), ending)


pointers = st.sampled_from(["prp", "prp", "sgl", "sgl", "outside", "misaligned",
                            "sgl_short"])
# ...and transfers around the 128 KiB MDTS (256 blocks).
data_commands = st.tuples(st.sampled_from([NVM_READ, NVM_WRITE]),
                          extents(st.one_of(st.integers(1, 40), st.integers(250, 260))),
                          pointers, st.integers(0, 2**32 - 1))
other_commands = st.one_of(
    st.tuples(st.just(NVM_WRITE_ZEROES), extents(st.integers(1, 64)), st.booleans()),
    st.tuples(st.just(NVM_FLUSH), st.sampled_from([1, NSID_ALL, 0, 7])),
    st.tuples(st.just(NVM_DATASET_MANAGEMENT),
              st.lists(extents(st.integers(0, 16)), min_size=1, max_size=4),
              st.booleans(), pointers),
    st.tuples(st.sampled_from([0x04, 0x05, 0x0C, 0x81]), slbas),
    st.tuples(st.just("namespace"), slbas),
)
batches = st.lists(st.one_of(data_commands, other_commands), min_size=1, max_size=12)


def host_bytes(address, size):
    """The host memory at [address, address + size), as a numpy view."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))


def fill(pieces, data):
    done = 0
    for address, size in pieces:
        host_bytes(address, size)[:] = data[done:done + size]
        done += size


class Batch:
    """Commands with their buffers in the rig's host memory, and the buffers reads fill."""

    def __init__(self, rig, specs, rng, allocations):
        self.rig = rig
        self.rng = rng
        self.allocations = allocations
        self.targets = []
        self.commands = np.concatenate([self._command(cid, spec)
                                        for cid, spec in enumerate(specs)])

    def _alloc(self, nbytes):
        buffer = self.rig.memory.alloc(nbytes)
        self.allocations.append(buffer)
        return buffer

    def _pieces(self, length, mode):
        # The buffer of a command of `length` bytes, as host pieces: one contiguous buffer
        # for PRPs, else up to four pieces at odd places.
        if mode == "prp":
            offset = int(self.rng.integers(0, PAGE_SIZE // 4)) * 4
            buffer = self._alloc(offset + length)
            return [(buffer.ctypes.data + offset, length)]
        cuts = sorted(set(self.rng.integers(1, length, size=3).tolist())) if length > 1 else []
        sizes = np.diff([0, *cuts, length]).tolist()
        return [(self._alloc(size + 7).ctypes.data + int(self.rng.integers(0, 7)), size)
                for size in sizes]

    def _point(self, sqe, length, mode):
        # Fill in the data pointer; returns the pieces data moves through.
        pieces = self._pieces(length, "prp" if mode in ("prp", "outside", "misaligned")
                              else "sgl")
        words = sqe.view(np.uint32)
        iov = np.array(pieces, dtype=np.uint64)
        assert build_data_pointer(iov, len(iov), self._alloc(PAGE_SIZE).ctypes.data,
                                  words) == 0
        if mode == "outside":
            sqe["prp1"] = self.rig.memory.base + self.rig.memory.size + PAGE_SIZE
        elif mode == "misaligned":
            sqe["prp1"] += 2
        elif mode == "sgl_short" and sqe["flags"][0]:
            # The SGL describes one byte less than the transfer.
            segment_bytes = int(sqe["prp2"][0]) & 0xFFFFFFFF
            if len(pieces) == 1:
                sqe["prp2"] -= 1
            else:
                segment = host_bytes(int(sqe["prp1"][0]), segment_bytes).view(np.uint64)
                segment[-1] -= 1
        return pieces

    def _command(self, cid, spec):
        kind = spec[0]
        if kind in (NVM_READ, NVM_WRITE):
            _, (slba, blocks), mode, seed = spec
            sqe = command(kind, cid, slba=slba, blocks=blocks)
            length = blocks * BLOCK
            pieces = self._point(sqe, length, mode)
            if kind == NVM_WRITE:
                fill(pieces, np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8))
            else:
                self.targets.extend(pieces)
            return sqe
        if kind == NVM_WRITE_ZEROES:
            _, (slba, blocks), deallocate = spec
            sqe = command(kind, cid, slba=slba, blocks=blocks)
            if deallocate:
                sqe["cdw12"] |= CDW12_DEAC
            return sqe
        if kind == NVM_FLUSH:
            return command(kind, cid, nsid=spec[1])
        if kind == NVM_DATASET_MANAGEMENT:
            _, ranges, deallocate, mode = spec
            sqe = command(kind, cid, cdw10=len(ranges) - 1, cdw11=CDW11_AD if deallocate else 0)
            raw = np.zeros(len(ranges), dtype=DSM_RANGE)
            raw["slba"] = [slba for slba, _ in ranges]
            raw["blocks"] = [blocks for _, blocks in ranges]
            fill(self._point(sqe, raw.nbytes, mode), raw.view(np.uint8))
            return sqe
        if kind == "namespace":
            return command(NVM_READ, cid, nsid=2, slba=spec[1])
        return command(kind, cid, slba=spec[1])

    def clear_targets(self):
        for address, size in self.targets:
            host_bytes(address, size)[:] = 0

    def target_bytes(self):
        return [host_bytes(address, size).tobytes() for address, size in self.targets]



@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=batches, reverse=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_the_controller_does_what_the_reference_does(rig, specs, reverse, seed):
    rng = np.random.default_rng(seed)
    disk = rig.disk.data
    disk[:] = rng.integers(0, 256, len(disk), dtype=np.uint8)
    before = bytearray(disk.tobytes())
    allocations = []
    try:
        batch = Batch(rig, specs, rng, allocations)
        batch.clear_targets()
        rig.disk.reverse = reverse
        completions = rig.run(rig.pair, batch.commands)
        statuses = {int(c["cid"]): status_of(c) for c in completions}
        read_back = batch.target_bytes()
        batch.clear_targets()
        oracle = NvmeReference(before, BLOCK, [rig.memory.region],
                               max_transfer=rig.driver.max_transfer)
        expected = {cid: oracle.execute(sqe.tobytes())
                    for cid, sqe in enumerate(batch.commands.view(SQE))}
        assert statuses == expected
        assert read_back == batch.target_bytes()
        assert disk.tobytes() == bytes(oracle.disk)
    finally:
        rig.disk.reverse = False
        for buffer in allocations:
            rig.memory.free(buffer)
