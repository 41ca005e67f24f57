"""`fastpath hv` as a user runs it: a sub-command per scenario with a --help page that
teaches, tables on standard output, JSON that parses (on standard output with `--json -`, the
tables then on standard error), and bad options refused with exit status 2, not a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.cli import main
from fastpath.commands.hv import SCENARIOS

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]


def run(*args):
    return subprocess.run(FASTPATH + ["hv", *args], capture_output=True, text=True,
                          timeout=120)


def in_process(capsys, *args) -> tuple[int, str, str]:
    """`fastpath hv ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(["hv", *args])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_hv_help_lists_every_scenario(capsys):
    status, out, _ = in_process(capsys, "--help")
    assert status == 0
    for scenario in SCENARIOS:
        assert scenario.name in out


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_each_scenario_s_help_says_what_is_modelled_and_what_the_columns_mean(capsys, name):
    status, out, _ = in_process(capsys, name, "--help")
    assert status == 0
    assert "What is modelled" in out and "--json" in out
    assert "table" in out.lower() and "(default:" in out


def test_json_on_standard_output_parses_and_the_tables_go_to_standard_error():
    result = run("walk", "--addresses", "200", "--pages", "64", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["scenario"] == "walk" and data["options"]["addresses"] == 200
    assert data["environment"]["fastpath"] and data["tables"][0]["title"] == "Translations"
    assert data["figures"]["ept"][0]["references_per_translation"] == 4
    assert "Translations" in result.stderr


def test_tables_on_standard_output_and_json_to_a_file(tmp_path):
    out = tmp_path / "exits.json"
    result = run("exits", "--cpuid", "7", "--io", "6", "--memory", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "VM exits by reason" in result.stdout and "10 CPUID" in result.stdout
    data = json.loads(out.read_text())
    assert data["figures"]["exits_by_reason"]["CPUID"] == 7


@pytest.mark.parametrize("args, says", [
    (["walk", "--unmapped", "1.5"], "--unmapped"),
    (["walk", "--tlb-entries", "1000"], "power of two"),
    (["exits", "--handler-cycles", "NOPE=1"], "REASON=CYCLES"),
    (["vtd", "--devices", "9"], "--devices"),
    (["sriov", "--vfs", "many"], "--vfs"),
    (["walk", "--pages", "300000"], "at most"),            # refused by the scenario itself
    (["sriov", "--vfs", "40", "--rss"], "pools"),
    (["spiral"], "invalid choice"),
])
def test_a_bad_option_is_a_clear_error(capsys, args, says):
    status, _, err = in_process(capsys, *args)
    assert status == 2 and says in err


def test_a_bad_option_run_as_a_command_exits_2_without_a_traceback():
    result = run("walk", "--page-size", "3k")
    assert result.returncode == 2
    assert "--page-size" in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    # `fastpath hv walk | head -1`: the tables are written to a pipe nobody reads any more.
    process = subprocess.Popen(FASTPATH + ["hv", "walk", "--addresses", "200", "--pages", "64"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
