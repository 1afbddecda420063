"""benchmarks/threads.py (named apart from tests/pipelines/test_threads.py): the parts that time nothing."""

from benchmarks.threads import _env, configurations, table


def test_each_run_gets_only_its_configuration_s_openmp_settings(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # whatever the benchmark's own environment holds
    configs = configurations(2)
    old, passive = _env(configs["old default"]["env"]), _env(configs["passive"]["env"])
    assert "OMP_WAIT_POLICY" not in old and passive["OMP_WAIT_POLICY"] == "PASSIVE"
    assert configs["old default"]["threads"] == 2 and configs["new default"]["threads"] == 0


def test_table_has_a_row_per_default_and_a_column_per_case():
    def run(name, machine, steps, seconds, threads):
        return {"configuration": name, "what": f"{name} settings", "machine": machine, "steps": steps,
                "erase_seconds": seconds, "torch_threads": threads, "load_1min_before": 0.25}

    text = table({"runs": [run("old default", "idle", 200, 75.04, 2), run("new default", "idle", 200, 76.0, 2),
                           run("old default", "shared", 20, 400.0, 2), run("new default", "shared", 20, 9.5, 1)]})
    lines = text.splitlines()
    assert lines[0] == "| default | idle, 200 steps | shared, 20 steps |"
    assert lines[2] == "| old default: old default settings | 75.0 s (2 thr, load 0.25) | 400.0 s (2 thr, load 0.25) |"
    assert lines[3].endswith("| 9.5 s (1 thr, load 0.25) |") and len(lines) == 4
