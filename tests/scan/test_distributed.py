"""`torchrun --nproc-per-node 2 -m convscope scan` (gloo, CPU) equals the single-process scan exactly."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from scan.conftest import SIZE, TINY, run_cli

TORCHRUN = Path(sys.executable).with_name("torchrun")


def dump(directory: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(directory / "scan.sqlite") as db:
        return (
            db.execute("SELECT * FROM topk ORDER BY layer, channel, rank").fetchall(),
            db.execute("SELECT * FROM images ORDER BY idx").fetchall(),
            db.execute("SELECT layer, vals, imgs, pos FROM state ORDER BY layer").fetchall(),
        )


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"no torchrun next to {sys.executable}")
def test_two_processes_equal_one(tmp_path: Path, image_dir: Path) -> None:
    # batch size 2: 7 batches, 4 on rank 0 and 3 on rank 1; a checkpoint (merge) after every round
    common = ["--model", TINY, "--images", str(image_dir), "--size", str(SIZE), "--layers", "all"]
    common += ["--top", "4", "--batch-size", "2", "--checkpoint-every", "4", "--device", "cpu"]
    single = run_cli("scan", *common, "--workers", "1", "--out", str(tmp_path / "one"))  # + a reader process
    assert single.returncode == 0, single.stderr
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "convscope"]
    double = run_cli("scan", *common, "--out", str(tmp_path / "two"), launcher=launcher)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "on 2 processes" in double.stdout and "scanned 14 images" in double.stdout
    one, two = dump(tmp_path / "one"), dump(tmp_path / "two")
    assert one[0] and one[0] == two[0]  # top-k: values, images, positions
    assert one[1] == two[1]  # image list with content hashes and skip reasons
    assert one[2] == two[2]  # the checkpointed state
