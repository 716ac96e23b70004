"""`torchrun ... -m convscope scan` with 2 gloo processes on the CPU equals the single-process scan
exactly, launched with the multi-node command line (`--nnodes`, `--node-rank`, c10d rendezvous) on
one node; a scan interrupted in one process resumes under torchrun to the same result."""

from __future__ import annotations

import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from convscope.engine import Engine
from convscope.scan import ScanStore, folder_source, run_scan
from convscope.tasks import CallbackTask, Cancelled
from scan.conftest import SIZE, TINY, run_cli

TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason=f"no torchrun next to {sys.executable}")
LAYERS = "all"


def dump(directory: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(directory / "scan.sqlite") as db:
        return (
            db.execute("SELECT * FROM topk ORDER BY layer, channel, rank").fetchall(),
            db.execute("SELECT * FROM images ORDER BY idx").fetchall(),
            db.execute("SELECT layer, vals, imgs, pos FROM state ORDER BY layer").fetchall(),
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun(processes: int) -> list[str]:
    """The multi-node command line of docs/scan.md, for one node of `processes` processes."""
    return [
        str(TORCHRUN),
        "--nnodes",
        "1",
        "--node-rank",
        "0",
        "--nproc-per-node",
        str(processes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "convscope-test",
        "-m",
        "convscope",
    ]


def scan_args(image_dir: Path) -> list[str]:
    # batch size 2: 7 batches, 4 on rank 0 and 3 on rank 1; a checkpoint (merge) after every round
    common = ["--model", TINY, "--images", str(image_dir), "--size", str(SIZE), "--layers", LAYERS]
    return [*common, "--top", "4", "--batch-size", "2", "--checkpoint-every", "4", "--device", "cpu"]


@pytest.mark.slow
@needs_torchrun
def test_two_processes_equal_one(tmp_path: Path, image_dir: Path) -> None:
    common = scan_args(image_dir)
    single = run_cli("scan", *common, "--workers", "1", "--out", str(tmp_path / "one"))  # + a reader process
    assert single.returncode == 0, single.stderr
    double = run_cli("scan", *common, "--out", str(tmp_path / "two"), launcher=torchrun(2))
    assert double.returncode == 0, double.stderr[-3000:]
    assert "on 2 processes" in double.stdout and "scanned 14 images" in double.stdout
    one, two = dump(tmp_path / "one"), dump(tmp_path / "two")
    assert one[0] and one[0] == two[0]  # top-k: values, images, positions
    assert one[1] == two[1]  # image list with content hashes and skip reasons
    assert one[2] == two[2]  # the checkpointed state
    assert "skipped broken.jpg" in single.stderr and "skipped broken.jpg" in double.stderr  # logged by its reader


@pytest.mark.slow
@needs_torchrun
def test_a_scan_interrupted_in_one_process_resumes_under_torchrun(
    tmp_path: Path, image_dir: Path, tiny_engine: Engine
) -> None:
    out, reference = tmp_path / "scan", tmp_path / "reference"
    options = {"layers": LAYERS, "top": 4, "batch_size": 2, "checkpoint_images": 4}
    run_scan(tiny_engine, folder_source(image_dir), reference, **options)
    stops = iter([False, False, True])  # the third round asks to stop: a checkpoint after 6 images
    with pytest.raises(Cancelled):
        run_scan(
            tiny_engine, folder_source(image_dir), out, task=CallbackTask(should_stop=lambda: next(stops)), **options
        )
    assert ScanStore(out).progress().images_done == 6
    resumed = run_cli("scan", *scan_args(image_dir), "--out", str(out), "--resume", launcher=torchrun(2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "scanned 8 images on 2 processes" in resumed.stdout  # only the 8 not yet scanned
    assert dump(out) == dump(reference)
