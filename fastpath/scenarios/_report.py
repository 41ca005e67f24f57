"""What a scenario hands back: named tables for a person and one JSON-able dict for a program,
so that `fastpath hv` prints and saves every scenario the same way."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """One table of a report: a title, column headers, and rows of cells (numbers or text)."""

    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The table as JSON-able data."""
        return {"title": self.title, "headers": self.headers, "rows": self.rows}


@dataclass
class Report:
    """A scenario's outcome: `figures` holds its counters under stable names (what --json
    writes and tests read), `tables` the same figures laid out for reading."""

    scenario: str
    figures: dict
    tables: list[Table] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The report as JSON-able data: what --json writes."""
        return {"scenario": self.scenario, "figures": self.figures,
                "tables": [t.as_dict() for t in self.tables]}
