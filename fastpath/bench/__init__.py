"""Benchmarks behind `fastpath bench`: each measures fastpath beside a reference in one run.

The report helpers every benchmark and command uses are public: `environment()` (versions,
CPU, git revision), `print_table` and `write_json`.
"""

from fastpath.bench._report import environment, print_table, write_json

__all__ = ["environment", "print_table", "write_json"]
