"""Scenarios that run the modelled platform (`fastpath.hv`) together with the dataplane above it:
a vIOMMU answering a real back-end's IOTLB misses, a guest whose kicks are VM exits that reach a
running back-end. `hv` imports nothing above it, so the joins live here, one module each; the
`fastpath hv` command prints what they count."""

__all__: list[str] = []
