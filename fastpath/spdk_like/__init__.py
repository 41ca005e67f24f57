"""SPDK-style block I/O: bdevs, NVMe-like queue pairs, pollers, vhost-user-blk (to come)."""

__all__: list[str] = []
