"""`fastpath bench walk`: the compiled walkers timed beside the reference, TLB off and on."""

import json

import pytest

from fastpath.cli import main


def test_bench_walk_short_run_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "walk.json"
    assert main(["bench", "walk", "--walks", "20000", "--reference-walks", "200", "--repeat",
                 "1", "--pages", "256", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "core/reference" in printed and "refs/walk" in printed
    data = json.loads(out.read_text())
    rows = {(r["walk"], r["tlb"]): r for r in data["results"]}
    assert set(rows) == {("ept", False), ("ept", True), ("2d", False), ("2d", True)}
    for (walk, tlb), row in rows.items():
        assert row["core"] > row["reference"] > 0
        # 4 KiB pages, 4 levels each: 4 and (4+1)(4+1)-1 = 24 (hv.md §1.10); hits take none.
        full = {"ept": 4, "2d": 24}[walk]
        if tlb:
            assert 0 < row["references_per_walk"] < full
        else:
            assert row["references_per_walk"] == full
        assert (row["tlb_hit_rate"] is None) == (not tlb)
    # 256 pages fit the default TLB: after the first touch of each page, walks hit.
    assert rows["ept", True]["tlb_hit_rate"] > 0.9


def test_bench_walk_refuses_unknown_kinds(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "walk", "--kinds", "ept,3d"])
    assert exit_.value.code == 2
    assert "ept/2d" in capsys.readouterr().err
