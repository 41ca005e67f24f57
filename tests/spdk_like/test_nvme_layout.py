"""NVMe wire layouts held to byte vectors built by hand from the spec's figures (NVMe Base 2.0
§3.3.3.1 and §3.3.3.2, §4.1.2; NVM Command Set 1.0 §3.2.3, §4.1.5.1)."""

import numpy as np

from fastpath.spdk_like import _nvme_layout as layout
from fastpath.testing.reference import nvme as reference


def test_submission_queue_entry_fields_sit_where_figure_87_puts_them():
    raw = bytearray(64)
    raw[0] = 0x02                                   # CDW0 bits 7:0: opcode (Read)
    raw[1] = 0b01 << 6                              # bits 15:14: PSDT 01b (SGL)
    raw[2:4] = (0xBEEF).to_bytes(2, "little")       # bits 31:16: command identifier
    raw[4:8] = (1).to_bytes(4, "little")            # NSID
    raw[16:24] = (0x1111).to_bytes(8, "little")     # MPTR
    raw[24:32] = (0xAAAA000).to_bytes(8, "little")  # PRP entry 1 / SGL address
    raw[32:40] = (0xBBBB000).to_bytes(8, "little")  # PRP entry 2
    for k in range(6):                              # CDW10 to CDW15
        raw[40 + 4 * k:44 + 4 * k] = (0x100 + k).to_bytes(4, "little")
    sqe = np.frombuffer(bytes(raw), dtype=layout.SQE)[0]
    assert (sqe["opcode"], sqe["cid"], sqe["nsid"], sqe["mptr"]) == (2, 0xBEEF, 1, 0x1111)
    assert (sqe["prp1"], sqe["prp2"]) == (0xAAAA000, 0xBBBB000)
    assert [int(sqe[f"cdw{10 + k}"]) for k in range(6)] == [0x100 + k for k in range(6)]
    dwords = np.frombuffer(bytes(raw), dtype="<u4")
    cdw0 = int(dwords[layout.SQ_CDW0])
    assert cdw0 & layout.CDW0_OPCODE_MASK == 2
    assert cdw0 >> layout.CDW0_PSDT_SHIFT & layout.CDW0_PSDT_MASK == layout.PSDT_SGL_MPTR_BUFFER
    assert cdw0 >> layout.CDW0_CID_SHIFT == 0xBEEF
    assert dwords[layout.SQ_NSID] == 1 and dwords[layout.SQ_CDW12] == 0x102
    assert layout.qword(dwords, layout.SQ_PRP1) == 0xAAAA000
    assert layout.qword(dwords, layout.SQ_PRP2) == 0xBBBB000
    copy = np.zeros(16, dtype=np.uint32)
    layout.set_qword(copy, layout.SQ_PRP2, 0x1234_5678_9ABC_DEF0)
    assert copy[8:10].tobytes() == (0x1234_5678_9ABC_DEF0).to_bytes(8, "little")


def test_completion_queue_entry_fields_and_the_status_field_of_figure_92():
    # LBA Out of Range (generic 80h) with Do Not Retry, phase tag 1, for command 7 of
    # submission queue 3 whose head is 5.
    raw = bytearray(16)
    raw[0:4] = (0xDEADBEEF).to_bytes(4, "little")   # DW0
    raw[8:10] = (5).to_bytes(2, "little")           # SQHD
    raw[10:12] = (3).to_bytes(2, "little")          # SQID
    raw[12:14] = (7).to_bytes(2, "little")          # CID
    status_field = 1 | 0x80 << 1 | 0 << 9 | 1 << 15  # P, SC, SCT, DNR
    raw[14:16] = status_field.to_bytes(2, "little")
    cqe = np.frombuffer(bytes(raw), dtype=layout.CQE)[0]
    assert (cqe["dw0"], cqe["sq_head"], cqe["sq_id"], cqe["cid"]) == (0xDEADBEEF, 5, 3, 7)
    assert cqe["status"] == layout.STATUS_LBA_OUT_OF_RANGE << 1 | 1
    dwords = np.frombuffer(bytes(raw), dtype="<u4")
    assert dwords[layout.CQ_DW2] >> layout.CQ_SQID_SHIFT == 3
    assert dwords[layout.CQ_DW3] >> layout.CQ_PHASE_SHIFT & 1 == 1
    assert dwords[layout.CQ_DW3] >> layout.CQ_STATUS_SHIFT == layout.STATUS_LBA_OUT_OF_RANGE


def test_status_values_are_the_spec_codes_and_types():
    # (type, code, Do Not Retry) of each: Base Figures 93 to 96 and the NVM command set's.
    expected = {
        "invalid_opcode": (0, 0x01, 1), "invalid_field": (0, 0x02, 1),
        "data_transfer_error": (0, 0x04, 1), "internal_error": (0, 0x06, 0),
        "invalid_namespace": (0, 0x0B, 1), "invalid_sgl_segment": (0, 0x0D, 1),
        "invalid_sgl_count": (0, 0x0E, 1), "data_sgl_length_invalid": (0, 0x0F, 1),
        "sgl_type_invalid": (0, 0x11, 1), "prp_offset_invalid": (0, 0x13, 1),
        "write_protected": (0, 0x20, 1), "lba_out_of_range": (0, 0x80, 1),
        "capacity_exceeded": (0, 0x81, 1), "invalid_cq": (1, 0x00, 1),
        "invalid_queue_id": (1, 0x01, 1), "invalid_queue_size": (1, 0x02, 1),
        "invalid_queue_deletion": (1, 0x0C, 1), "write_fault": (2, 0x80, 0),
        "unrecovered_read_error": (2, 0x81, 0),
    }
    names = {name: value for value, name in layout.STATUS_NAMES.items()}
    for name, (sct, sc, dnr) in expected.items():
        assert names[name] == sc | sct << 8 | dnr << 14, name
    # The reference oracle spells its statuses out from the spec too: they agree.
    for name, value in reference.STATUS.items():
        assert names[name] == value, name


def test_sgl_descriptor_identifier_is_byte_15_type_high_nibble():
    raw = bytearray(16)
    raw[0:8] = (0x7000).to_bytes(8, "little")
    raw[8:12] = (0x230).to_bytes(4, "little")
    raw[15] = layout.SGL_TYPE_LAST_SEGMENT << 4
    descriptor = np.frombuffer(bytes(raw), dtype=layout.SGL_DESCRIPTOR)[0]
    assert (descriptor["address"], descriptor["length"]) == (0x7000, 0x230)
    assert descriptor["identifier"] >> 4 == layout.SGL_TYPE_LAST_SEGMENT
    word1 = int(np.frombuffer(bytes(raw), dtype="<u8")[1])
    assert word1 >> layout.SGL_TYPE_SHIFT == layout.SGL_TYPE_LAST_SEGMENT
    assert word1 >> layout.SGL_SUBTYPE_SHIFT & 0xF == layout.SGL_SUBTYPE_ADDRESS
    assert word1 & layout.SGL_LENGTH_MASK == 0x230


def test_dataset_management_range_is_attributes_blocks_then_starting_lba():
    raw = (3).to_bytes(4, "little") + (8).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little")
    entry = np.frombuffer(raw, dtype=layout.DSM_RANGE)[0]
    assert (entry["attributes"], entry["blocks"], entry["slba"]) == (3, 8, 1 << 40)


def test_identify_fields_sit_at_their_byte_offsets():
    raw = bytearray(4096)
    raw[77] = 5                                       # MDTS
    raw[80:84] = (0x00020000).to_bytes(4, "little")   # VER 2.0
    raw[111] = 1                                      # CNTRLTYPE: I/O controller
    raw[512], raw[513] = 0x66, 0x44                   # SQES, CQES
    raw[516:520] = (1).to_bytes(4, "little")          # NN
    raw[520:522] = (0b1100).to_bytes(2, "little")     # ONCS: DSM and Write Zeroes
    raw[525] = 1                                      # VWC
    raw[536:540] = (1).to_bytes(4, "little")          # SGLS
    controller = np.frombuffer(bytes(raw), dtype=layout.IDENTIFY_CONTROLLER)[0]
    assert (controller["mdts"], controller["ver"], controller["cntrltype"]) == (5, 0x20000, 1)
    assert (controller["sqes"], controller["cqes"], controller["nn"]) == (0x66, 0x44, 1)
    assert controller["oncs"] == layout.ONCS_DATASET_MANAGEMENT | layout.ONCS_WRITE_ZEROES
    assert (controller["vwc"], controller["sgls"]) == (1, 1)
    raw = bytearray(4096)
    raw[0:8] = (1000).to_bytes(8, "little")           # NSZE
    raw[128:132] = (12 << 16).to_bytes(4, "little")   # LBAF0: 4096-byte blocks
    namespace = np.frombuffer(bytes(raw), dtype=layout.IDENTIFY_NAMESPACE)[0]
    assert namespace["nsze"] == 1000
    assert 1 << (int(namespace["lbaf0"]) >> layout.LBAF_LBADS_SHIFT & 0xFF) == 4096


def test_doorbells_are_consecutive_dwords_from_1000h_with_stride_0():
    # SQyTDBL at 1000h + (2y * 4), CQyHDBL at 1000h + ((2y + 1) * 4).
    for qid in range(4):
        assert 0x1000 + 4 * layout.sq_tail_doorbell(qid) == 0x1000 + 2 * qid * 4
        assert 0x1000 + 4 * layout.cq_head_doorbell(qid) == 0x1000 + (2 * qid + 1) * 4
