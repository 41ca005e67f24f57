"""Benchmarks behind `fastpath bench`: each measures fastpath beside a reference in one run."""

__all__: list[str] = []
