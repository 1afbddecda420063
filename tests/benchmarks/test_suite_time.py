"""benchmarks/suite_time.py: the parts that time nothing (reading pytest's summary, the table, the baseline)."""

import subprocess

import pytest

from benchmarks.suite_time import parse_summary, table, unpack


def test_the_summary_line_gives_counts_and_pytest_s_seconds():
    out = "....\n" + "468 passed, 1 skipped, 14 warnings in 62.87s (0:01:02)\n"
    assert parse_summary(out) == {"counts": {"passed": 468, "skipped": 1, "warnings": 14}, "pytest_seconds": 62.87}
    assert parse_summary("==== 1 failed, 148 passed in 75.20s ====\n")["counts"] == {"failed": 1, "passed": 148}
    assert parse_summary("killed before the end\n") == {"counts": {}, "pytest_seconds": None}


def test_table_has_a_row_per_suite_and_the_walls_of_each_state_in_order():
    def run(suite, machine, wall, rc=0, timed_out=False):
        return {"suite": suite, "machine": machine, "wall_s": wall, "returncode": rc, "timed_out": timed_out,
                "counts": {"passed": 148, "failed": 1} if suite == "baseline" else {"passed": 468, "skipped": 1}}

    runs = [run("baseline", "idle", 90.4, rc=1), run("this checkout", "idle", 71.0),
            run("baseline", "torch jobs", 1800.0, rc=None, timed_out=True),
            run("this checkout", "torch jobs", 150.2), run("this checkout", "idle", 72.6)]
    lines = table({"runs": runs}).splitlines()
    assert lines[0] == "| suite | tests | wall, idle | wall, torch jobs |"
    assert lines[2] == "| baseline | 149 | 90 s (rc 1) | 1800 s (timed out) |"
    assert lines[3] == "| this checkout | 469 | 71 s, 73 s | 150 s |" and len(lines) == 4


def test_the_baseline_is_the_commit_s_files_and_an_unknown_commit_is_one_line(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "suite.txt").write_text("the old suite\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "suite.txt"], ["commit", "-qm", "old"]):
        subprocess.run([*git, *args], check=True)
    (repo / "suite.txt").write_text("changed since\n")
    full = unpack("HEAD", tmp_path / "baseline", repo)
    assert len(full) == 40 and (tmp_path / "baseline" / "suite.txt").read_text() == "the old suite\n"
    with pytest.raises(SystemExit, match="is not a commit"):
        unpack("no-such-commit", tmp_path / "other", repo)
