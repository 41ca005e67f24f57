"""`fastpath hv sriov`'s figures against the SR-IOV and VMDq models: VF RIDs from First VF
Offset and VF Stride (across a bus), BARs sized by probing, every frame of the burst in a pool
or dropped, per-queue counts that add up to the pools', and VF DMA faults all recorded."""

from fastpath.scenarios import sriov

SMALL = {"vfs": 4, "frames": 1000, "dma": 64, "pages": 16, "bad": 0.2}


def test_vf_rids_follow_offset_and_stride_onto_the_next_bus():
    figures = sriov.run(**SMALL, first_vf_offset=0xFC, vf_stride=2).figures
    rids = [vf["rid"] for vf in figures["vfs"]]
    assert rids == [sriov.PF_RID + 0xFC + 2 * k for k in range(SMALL["vfs"])]
    assert [vf["address"] for vf in figures["vfs"]][1:3] == ["3b:1f.6", "3c:00.0"]
    assert figures["buses"] == [0x3B, 0x3C]


def test_vf_bars_are_probed_and_placed_one_vf_after_another():
    figures = sriov.run(**SMALL).figures
    assert figures["pf"]["vf_bar_sizes"] == {0: 16 << 10, 3: 16 << 10}
    bar0 = [vf["bars"][0] for vf in figures["vfs"]]
    assert bar0 == [(sriov.BAR_WINDOWS + k * (16 << 10), 16 << 10) for k in range(4)]


def test_every_frame_is_in_a_pool_or_dropped():
    for rss in (False, True):
        s = sriov.run(**SMALL, rss=rss).figures["steering"]
        assert s["delivered"] + s["dropped"] == SMALL["frames"]
        # A replicated broadcast lands in every pool: the PF's and each VF's.
        assert sum(s["per_pool"].values()) == s["delivered"] + s["replicated"] * SMALL["vfs"]
        assert sum(s["per_queue"].values()) == sum(s["per_pool"].values())
        assert s["queues_per_pool"] == (4 if rss else 2)
        assert s["to_default_pool"] > 0 and s["replicated"] > 0


def test_without_a_default_pool_unknown_unicast_is_dropped():
    with_default = sriov.run(**SMALL).figures["steering"]
    without = sriov.run(**SMALL, default_pool=False).figures["steering"]
    assert without["to_default_pool"] == 0
    assert without["dropped"] == with_default["dropped"] + with_default["to_default_pool"]


def test_vf_dma_faults_on_bad_iovas_and_every_fault_is_recorded():
    figures = sriov.run(**SMALL).figures
    faults = 0
    for vf in figures["dma"]:
        assert vf["translated"] + sum(vf["faults_by_reason"].values()) == SMALL["dma"]
        assert set(vf["faults_by_reason"]) <= {"0x5 FR_WRITE"}
        faults += sum(vf["faults_by_reason"].values())
    assert faults > 0 and figures["faults_recorded"] == {"0x5 FR_WRITE": faults}
