import numpy as np

SEGMENT_SIZE: int
CHAIN_SIZE: int
DRIVER_CHAIN_SIZE: int
USED_ELEM_SIZE: int
DEBUG_BUILD: bool
FP_VQ_EVENT_IDX: int
FP_VQ_INDIRECT: int
FP_MAX_INDIRECT: int
FP_SEG_WRITE: int
FP_NERRORS: int
FP_OK: int
FP_E_HEAD_RANGE: int
FP_E_NEXT_RANGE: int
FP_E_CHAIN_LOOP: int
FP_E_DESC_MEMORY: int
FP_E_INDIRECT: int
FP_E_WRITE_ORDER: int
FP_E_TOO_MANY_SEGMENTS: int
FP_E_AVAIL_IDX: int
FP_E_USED_ID: int
FP_E_BROKEN: int
FP_E_CHAIN_BYTES: int
FP_E_NO_SPACE: int

def chain_gather(chains: np.ndarray, index: int, segs: np.ndarray, dst: np.ndarray) -> int: ...
def chain_scatter(chains: np.ndarray, index: int, segs: np.ndarray, src: np.ndarray) -> int: ...
def check_driver_chains(chains: np.ndarray, n: int, segs: np.ndarray, queue_size: int) -> None: ...
def record_offsets() -> dict[str, dict[str, int]]: ...
