"""The store: resume after an interruption equals an uninterrupted scan; a finished scan is a no-op."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from convscope.engine import Engine
from convscope.errors import InvalidRequestError
from convscope.scan import ScanStore, ScanStoreError, folder_source, run_scan
from convscope.tasks import CallbackTask, Cancelled
from scan.conftest import SIZE, TINY, run_cli

LAYERS = "relu1,relu2,relu3"


class Crash(Exception):
    """A simulated crash: nothing after it runs (no clean-up, no last checkpoint)."""


def rows(directory: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(directory / "scan.sqlite") as db:
        topk = db.execute("SELECT * FROM topk ORDER BY layer, channel, rank").fetchall()
        images = db.execute("SELECT * FROM images ORDER BY idx").fetchall()
    return topk, images


def stop_after(images: int, error: type[BaseException]) -> CallbackTask:
    def progress(done: int, total: int) -> None:
        if done >= images:
            raise error("stop")

    return CallbackTask(progress)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, image_dir: Path, tiny_engine: Engine) -> Path:
    out = tmp_path_factory.mktemp("reference") / "scan"
    run_scan(tiny_engine, folder_source(image_dir), out, layers=LAYERS, top=5, batch_size=3)
    return out


def test_a_finished_store_holds_the_manifest_and_tables(reference: Path, image_dir: Path) -> None:
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["format"] == "convscope-scan/1"
    assert manifest["images"]["count"] == 14 and manifest["images"]["root"] == str(image_dir.resolve())
    assert manifest["progress"]["skipped"] == 1 and manifest["progress"]["images_done"] == 14
    assert [layer["name"] for layer in manifest["layers"]] == LAYERS.split(",")
    topk, images = rows(reference)
    assert all(sha is not None and len(sha) == 64 for _, _, _, sha, _ in images)
    assert [path for _, _, path, _, error in images if error] == ["broken.jpg"]
    # one entry per image per channel, k per channel
    seen = [(layer, channel, image) for layer, channel, _, _, image, _, _ in topk]
    assert len(seen) == len(set(seen))
    assert len(topk) == 5 * (6 + 8 + 5)
    assert not list(reference.glob(".*.tmp"))  # atomic writes left no temporary files


@pytest.mark.parametrize("error", [Crash, KeyboardInterrupt])
def test_resume_after_an_interruption_equals_an_uninterrupted_scan(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine, reference: Path, error: type[BaseException]
) -> None:
    out = tmp_path / "scan"
    source = folder_source(image_dir)
    options = {"layers": LAYERS, "top": 5, "batch_size": 3}
    with pytest.raises(error):  # raised after the 3rd batch, before its checkpoint
        run_scan(tiny_engine, source, out, checkpoint_images=6, task=stop_after(9, error), **options)
    progress = ScanStore(out).progress()
    # a crash keeps the last checkpoint (6 images); Ctrl-C also saves the batches since (9)
    assert progress.images_done == (6 if error is Crash else 9)
    assert ScanStore(out).manifest().status == "running"
    with pytest.raises(ScanStoreError, match="--resume"):
        run_scan(tiny_engine, source, out, **options)

    counted: list[int] = []
    task = CallbackTask(lambda done, total: counted.append(done))
    result = run_scan(tiny_engine, source, out, resume=True, task=task, **options)
    assert result.status == "complete"
    assert result.scanned == 14 - progress.images_done  # no image read twice
    assert counted[0] == progress.images_done and counted[-1] == 14
    assert rows(out) == rows(reference)
    assert ScanStore(out).manifest().progress.skipped == 1


def test_rerunning_a_finished_scan_is_a_no_op(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine, reference: Path
) -> None:
    out = tmp_path / "scan"
    source = folder_source(image_dir)
    run_scan(tiny_engine, source, out, layers=LAYERS, top=5, batch_size=3)
    before = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    for resume in (False, True):
        result = run_scan(tiny_engine, source, out, layers=LAYERS, top=5, batch_size=3, resume=resume)
        assert (result.status, result.scanned) == ("unchanged", 0)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == before
    assert rows(out) == rows(reference)


def test_different_settings_are_refused_or_replaced(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    out = tmp_path / "scan"
    source = folder_source(image_dir)
    run_scan(tiny_engine, source, out, layers="relu1", top=2, batch_size=4)
    with pytest.raises(ScanStoreError, match=r"different settings \(top\)"):
        run_scan(tiny_engine, source, out, layers="relu1", top=3, batch_size=4)
    with pytest.raises(ScanStoreError, match="layers"):
        run_scan(tiny_engine, source, out, layers="relu2", top=2, batch_size=4)
    result = run_scan(tiny_engine, source, out, layers="relu2", top=2, batch_size=4, replace=True)
    assert result.status == "complete" and ScanStore(out).manifest().config.layers[0].name == "relu2"


def test_a_busy_store_is_refused(tmp_path: Path, image_dir: Path, tiny_engine: Engine) -> None:
    out = tmp_path / "scan"
    with ScanStore(out).lock(), pytest.raises(ScanStoreError, match="another scan"):
        run_scan(tiny_engine, folder_source(image_dir), out, layers="relu1")


def test_cli_scan_rerun_and_errors(tmp_path: Path, image_dir: Path, reference: Path) -> None:
    out = tmp_path / "scan"
    args = ["scan", "--model", TINY, "--images", str(image_dir), "--out", str(out), "--size", str(SIZE)]
    args += ["--layers", LAYERS, "--top", "5", "--batch-size", "3", "--device", "cpu"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "scanned 14 images" in first.stdout and "1 unreadable skipped" in first.stdout
    assert rows(out) == rows(reference)
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    bad = run_cli(*args[:-8], "--layers", "nope", "--out", str(tmp_path / "other"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("convscope scan: error:") and "nope" in bad.stderr


def test_a_folder_without_images_is_an_error(tmp_path: Path, tiny_engine: Engine) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(InvalidRequestError, match="no images"):
        run_scan(tiny_engine, folder_source(tmp_path / "empty"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cancelled_scan_keeps_its_progress_and_resumes(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine, reference: Path
) -> None:
    out = tmp_path / "scan"
    source = folder_source(image_dir)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 2  # at the second checkpoint

    options = {"layers": LAYERS, "top": 5, "batch_size": 3}
    with pytest.raises(Cancelled) as stopped:
        run_scan(tiny_engine, source, out, checkpoint_images=3, task=CallbackTask(should_stop=should_stop), **options)
    assert (stopped.value.done, stopped.value.total) == (6, 14)
    assert ScanStore(out).progress().images_done == 6
    assert ScanStore(out).manifest().status == "running"
    assert not list(out.glob(".*.tmp"))  # no half-written file beside the checkpoint
    resumed = run_scan(tiny_engine, source, out, resume=True, **options)
    assert (resumed.status, resumed.scanned) == ("complete", 8)
    assert rows(out) == rows(reference)
