"""Helpers that the port tests share."""


def send_once(port, pool, frames, queue=0) -> int:
    """tx_burst the frames once; returns how many the port took (the rest go back)."""
    mbufs = pool.burst(max(len(frames), 1))
    assert pool.alloc(mbufs, len(frames)) == len(frames)
    for mbuf, frame in zip(mbufs, frames, strict=False):
        pool.put(mbuf, frame)
    sent = port.tx_burst(queue, mbufs, len(frames))
    pool.release(mbufs[sent:], len(frames) - sent)
    return sent
