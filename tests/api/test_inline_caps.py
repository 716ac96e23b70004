"""Issue 19, fair scheduling: an occlusion small enough to be answered inside its request still
counts against the caps, over a real server (the real app and uvicorn, the tiny model).

Each client may have at most `client_max_running_jobs` of them being answered at once, and they
count as that client's jobs (`client_max_jobs`) and the server's (`max_active_jobs`) while they run.
The test holds the model's lock, so every admitted occlusion waits inside its request until the
test lets go: nothing finishes early, and what is counted is exactly what was admitted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from api.helpers import free_port, tiny_loader, tiny_settings
from convscope.api import create_app
from convscope.api.state import AppState

MODEL = "tiny"
OCCLUDE = f"/api/models/{MODEL}/images/chelsea/occlusion"
SMALL = {"size": 8, "stride": 8}  # 4×4 = 16 positions on the 32×32 input: answered in the request
LARGE = {"size": 2, "stride": 2}  # 16×16 = 256 positions: a job
RUNNING_PER_CLIENT = 2
JOBS_PER_CLIENT = 3


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, AppState]]:
    settings = tiny_settings(
        occlusion_job_threshold=64,
        client_max_running_jobs=RUNNING_PER_CLIENT,
        client_max_jobs=JOBS_PER_CLIENT,
        max_active_jobs=8,
    )
    app = create_app(settings, loader=tiny_loader())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _healthy(base), "the server did not become healthy")
        yield base, app.state.convscope
    finally:
        server.should_exit = True
        thread.join(30)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


@contextmanager
def _clients(base: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Alice and Bob: two HTTP sessions, each with its own client cookie (asked for before any
    request runs in parallel, so all of a session's requests are one client's)."""
    with httpx.Client(base_url=base, timeout=60) as alice, httpx.Client(base_url=base, timeout=60) as bob:
        for client in (alice, bob):
            assert client.get("/api/models").status_code == 200
            assert client.cookies.get("convscope_client")
        yield alice, bob


def _id(client: httpx.Client) -> str:
    return str(client.cookies["convscope_client"])


def test_a_client_at_its_in_request_limit_gets_429_while_another_clients_occlusion_is_accepted(
    server: tuple[str, AppState],
) -> None:
    base, state = server
    engine = state.pool.get(MODEL)
    with _clients(base) as (alice, bob), ThreadPoolExecutor(4) as pool:
        with engine.lock:  # every admitted occlusion waits for the model inside its request
            held = [pool.submit(alice.post, OCCLUDE, json=SMALL) for _ in range(RUNNING_PER_CLIENT)]
            _wait(
                lambda: state.jobs.inline_running(_id(alice)) == RUNNING_PER_CLIENT, "Alice's occlusions did not start"
            )
            refused = alice.post(OCCLUDE, json=SMALL)  # answered at once, without the model
            assert refused.status_code == 429, refused.text
            detail = refused.json()["detail"]
            assert f"limit per client is {RUNNING_PER_CLIENT}" in detail and "occlusion" in detail
            assert refused.headers["retry-after"]
            bobs = pool.submit(bob.post, OCCLUDE, json=SMALL)
            _wait(lambda: state.jobs.inline_running(_id(bob)) == 1, "Bob's occlusion was not admitted")
            assert not any(future.done() for future in [*held, bobs]), "nothing finishes while the model is held"
        answers = [future.result() for future in [*held, bobs]]
    assert [answer.status_code for answer in answers] == [200] * (RUNNING_PER_CLIENT + 1), answers[-1].text
    assert all((answer.json()["rows"], answer.json()["cols"]) == (4, 4) for answer in answers)
    assert state.jobs.inline_running(_id(alice)) == state.jobs.inline_running(_id(bob)) == 0
    with _clients(base) as (again, _):
        assert again.post(OCCLUDE, json=SMALL).status_code == 200  # the slots are free again


def test_occlusions_in_requests_count_as_the_clients_jobs(server: tuple[str, AppState]) -> None:
    """Two of Alice's in-request occlusions and one job fill her cap of three: her next occlusion,
    small or large, gets 429 naming the per-client limit; Bob's job is accepted meanwhile."""
    base, state = server
    engine = state.pool.get(MODEL)
    with _clients(base) as (alice, bob), ThreadPoolExecutor(4) as pool:
        with engine.lock:
            held = [pool.submit(alice.post, OCCLUDE, json=SMALL) for _ in range(RUNNING_PER_CLIENT)]
            _wait(
                lambda: state.jobs.inline_running(_id(alice)) == RUNNING_PER_CLIENT, "Alice's occlusions did not start"
            )
            job = alice.post(OCCLUDE, json=LARGE)
            assert job.status_code == 202, job.text
            for body in (SMALL, LARGE):
                refused = alice.post(OCCLUDE, json=body)
                assert refused.status_code == 429, refused.text
                assert f"{JOBS_PER_CLIENT} jobs queued or running" in refused.json()["detail"]
                assert "per client" in refused.json()["detail"]
            bobs = bob.post(OCCLUDE, json=LARGE)
            assert bobs.status_code == 202, bobs.text
        assert [future.result().status_code for future in held] == [200] * RUNNING_PER_CLIENT
        for client, started in ((alice, job), (bob, bobs)):
            url = started.json()["url"]
            _wait(lambda c=client, u=url: c.get(u).json()["state"] == "succeeded", "a job did not finish", 120)
