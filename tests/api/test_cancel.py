"""Cancelling an analysis job mid-way over HTTP: the job ends `cancelled` with no result,
no hook is left on the model, and the next interactive request is answered normally."""

from __future__ import annotations

import threading

import torch
from fastapi.testclient import TestClient

from api.helpers import MODEL, poll_job
from convscope.engine import Engine

BASE = f"/api/models/{MODEL}"


def hook_counts(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_an_analysis_job_cancelled_midway_leaves_nothing_behind(client: TestClient, engine: Engine) -> None:
    module = engine.model.module
    hooks_before = hook_counts(module)
    reached, release = threading.Event(), threading.Event()
    calls = {"n": 0}

    def gate(_module: torch.nn.Module, _inputs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # hold the second batch until the cancel request is in
            reached.set()
            assert release.wait(60)

    handle = module.register_forward_pre_hook(gate)
    try:
        response = client.post(f"{BASE}/analyses/dead-channels", json={"images": ["chelsea"] * 24})
        assert response.status_code == 202, response.text
        job = response.json()
        assert reached.wait(120)
        assert client.delete(job["url"]).json()["cancel_requested"] is True
        release.set()
        final = poll_job(client, job["url"])
    finally:
        release.set()
        handle.remove()
    assert final["state"] == "cancelled" and final["result"] is None
    assert 0 < final["done"] < final["total"] == 24  # stopped mid-way, not before or after
    assert hook_counts(module) == hooks_before  # the analysis removed its hooks
    predictions = client.get(f"{BASE}/images/chelsea/predictions")  # the lock was let go
    assert predictions.status_code == 200, predictions.text
