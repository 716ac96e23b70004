"""A scan run as an API job and cancelled mid-way leaves a resumable store, no half-written
file, and resuming it gives the same rows as an uninterrupted scan."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import torch

from convscope.api.jobs import JobManager
from convscope.engine import Engine
from convscope.scan import ScanStore, folder_source, run_scan
from convscope.tasks import Task

LAYERS = "relu1,relu2,relu3"
OPTIONS = {"layers": LAYERS, "top": 5, "batch_size": 3, "checkpoint_images": 3}


def rows(directory: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(directory / "scan.sqlite") as db:
        topk = db.execute("SELECT * FROM topk ORDER BY layer, channel, rank").fetchall()
        images = db.execute("SELECT * FROM images ORDER BY idx").fetchall()
    return topk, images


class Gate:
    """A forward pre-hook that holds the model in its `at`-th forward pass until released."""

    def __init__(self, module: torch.nn.Module, at: int) -> None:
        self.calls, self.at = 0, at
        self.reached, self.release = threading.Event(), threading.Event()
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: object) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.release.wait(60)

    def remove(self) -> None:
        self.release.set()
        self.handle.remove()


def test_a_job_is_a_task() -> None:
    manager = JobManager()
    try:
        job = manager.submit("noop", lambda job: None)
        assert isinstance(job, Task)
    finally:
        manager.shutdown()


def test_a_scan_job_cancelled_midway_resumes_to_the_same_result(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine
) -> None:
    source = folder_source(image_dir)
    reference = tmp_path / "reference"
    run_scan(tiny_engine, source, reference, **OPTIONS)

    out = tmp_path / "scan"
    manager = JobManager()
    gate = Gate(tiny_engine.model.module, at=3)
    try:
        job = manager.submit("scan", lambda job: run_scan(tiny_engine, source, out, task=job, **OPTIONS))
        assert gate.reached.wait(60)
        manager.cancel(job.id)
        gate.release.set()
        manager.wait(job.id, timeout=60)
    finally:
        gate.remove()
        manager.shutdown()
    assert job.state == "cancelled" and job.result is None
    store = ScanStore(out)
    assert store.manifest().status == "running"  # resumable, not complete
    assert store.progress().images_done == 9  # the checkpoint after the third batch
    assert not list(out.rglob("*.tmp"))  # no half-written file
    resumed = run_scan(tiny_engine, source, out, resume=True, **OPTIONS)
    assert resumed.status == "complete" and resumed.scanned == 14 - 9
    assert rows(out) == rows(reference)


def test_library_stop_before_the_first_checkpoint_raises_and_resumes(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine
) -> None:
    from convscope.tasks import CallbackTask, Cancelled

    source = folder_source(image_dir)
    out = tmp_path / "scan"
    with pytest.raises(Cancelled):
        run_scan(tiny_engine, source, out, task=CallbackTask(should_stop=lambda: True), **OPTIONS)
    assert ScanStore(out).progress().images_done == 3
    reference = tmp_path / "reference"
    run_scan(tiny_engine, source, reference, **OPTIONS)
    run_scan(tiny_engine, source, out, resume=True, **OPTIONS)
    assert rows(out) == rows(reference)
