"""The task protocol: progress reaches the reporter, a stop request raises Cancelled."""

import pytest

from convscope.tasks import NULL_TASK, CallbackTask, Cancelled, ConsoleTask, Task, checkpoint


def test_checkpoint_reports_then_stops_when_asked() -> None:
    seen: list[tuple[int, int]] = []
    stop = {"now": False}
    task = CallbackTask(lambda d, t: seen.append((d, t)), lambda: stop["now"])
    checkpoint(task, 1, 4)
    stop["now"] = True
    with pytest.raises(Cancelled) as info:
        checkpoint(task, 2, 4, "scan")
    assert seen == [(1, 4), (2, 4)]
    assert (info.value.done, info.value.total) == (2, 4)
    assert "scan cancelled after 2 of 4" in str(info.value)


def test_null_task_and_none_never_stop() -> None:
    checkpoint(None, 3, 3)
    checkpoint(NULL_TASK, 3, 3)
    assert isinstance(NULL_TASK, Task)
    assert isinstance(CallbackTask(), Task)


def test_console_task_tracks_the_total() -> None:
    with ConsoleTask("demo", "img") as task:
        task.report(2, 5)
        task.report(5, 5)
        assert (task.done, task.total) == (5, 5)
        assert not task.should_stop()


def test_console_task_starts_again_for_a_new_round() -> None:
    with ConsoleTask("ablate", "batch", show=True) as task:
        task.report(5, 5)
        task.report(1, 3)  # the next run of an ablation
        assert (task.done, task.total) == (1, 3)
        assert task._bar.n == 1 and task._bar.total == 3
