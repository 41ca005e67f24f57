"""Numba poll-mode drivers: mbuf pools, ports and forwarding engines (to come)."""

__all__: list[str] = []
