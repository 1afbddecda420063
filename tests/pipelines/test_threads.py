"""pipelines.threads: one thread for a small model, the cores for a large one, never the load of the moment."""

import os

import pytest
import torch

from pipelines import threads


@pytest.mark.parametrize("parameters,cores,expected", [
    (1_700_000, 2, 1), (threads.SMALL_MODEL - 1, 8, 1), (threads.SMALL_MODEL, 2, 2), (860_000_000, 16, 16)])
def test_default_is_one_thread_below_the_size_and_every_core_above(parameters, cores, expected):
    assert threads.default_threads(parameters, cores) == expected


def test_available_cores_are_this_process_s_share(monkeypatch):
    mine = threads.available_cores()
    assert 1 <= mine <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(mine * 4))  # more local processes than cores: one each
    assert threads.available_cores() == 1


def test_a_small_model_runs_on_one_thread_without_sampling_the_machine():
    with threads.restore_threads():
        info = threads.use_threads(0, 1_700_000)
        assert torch.get_num_threads() == 1 and info["torch_threads"] == 1
        assert info["chosen_by"].startswith("default: one thread below") and info["busy_cores_at_start"] is None


def test_an_explicit_count_is_used_and_the_process_s_count_comes_back():
    before = torch.get_num_threads()
    with threads.restore_threads():
        info = threads.use_threads(2, 1_700_000)
        assert torch.get_num_threads() == 2 and info["chosen_by"] == "--threads"
        assert info["busy_cores_at_start"] is not None and info["busy_cores_at_start"] >= 0  # sampled: 2 threads
        info = threads.use_threads(None, 1_700_000)
        assert info["torch_threads"] == 2 and info["chosen_by"] == "process (unchanged)"
    assert torch.get_num_threads() == before


def test_a_multi_threaded_run_beside_busy_processes_gets_a_note(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=threads.SAMPLE_SECONDS: 1.9)  # two cores in use
    with threads.restore_threads():
        info = threads.use_threads(2, 860_000_000)
    assert info["busy_cores_at_start"] == pytest.approx(1.9, abs=1e-9)
    assert "keep 1.9 of" in info["note"] and "--threads 1" in info["note"]
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=threads.SAMPLE_SECONDS: 0.1)
    with threads.restore_threads():
        assert threads.use_threads(2, 860_000_000)["note"] is None


@pytest.mark.parametrize("bad", [-1, threads.MAX_THREADS + 1])
def test_out_of_range_thread_counts_are_refused(bad):
    with pytest.raises(threads.ThreadsError, match="--threads must be between 0"):
        threads.check_threads(bad)
