"""GET /api/metrics: Prometheus text that parses, and counters that move with the work done."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.helpers import MODEL, tiny_loader, tiny_settings, wait_ready
from convscope.api import create_app

PROJECTION = "/api/models/{model}/images/{image_id}/projection"
BATCH = "/api/models/{model}/images/{image_id}/projections"


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/api/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_after_projections(client: TestClient) -> None:
    before = _samples(client)
    params = {"layer": "blocks.1", "channel": 9, "mode": "guided"}
    assert client.get(f"/api/models/{MODEL}/images/chelsea/projection", params=params).status_code == 200
    body = {"layer": "blocks.1", "mode": "guided", "seeds": [{"channel": 9}, {"channel": 10}, {"channel": 11}]}
    assert client.post(f"/api/models/{MODEL}/images/chelsea/projections", json=body).status_code == 200
    after = _samples(client)

    requests = "convscope_http_requests_total"
    assert _value(after, requests, method="GET", route=PROJECTION, status="200") == (
        _value(before, requests, method="GET", route=PROJECTION, status="200") + 1
    )
    assert _value(after, requests, method="POST", route=BATCH, status="200") == (
        _value(before, requests, method="POST", route=BATCH, status="200") + 1
    )
    latency = "convscope_http_request_duration_seconds_count"
    assert _value(after, latency, method="POST", route=BATCH) == _value(before, latency, method="POST", route=BATCH) + 1
    # one single projection (1 seed), then a batch that computed channels 10 and 11 only (9 was cached)
    sizes = "convscope_projection_batch_size"
    assert _value(after, f"{sizes}_count", model=MODEL) == _value(before, f"{sizes}_count", model=MODEL) + 2
    assert _value(after, f"{sizes}_sum", model=MODEL) == _value(before, f"{sizes}_sum", model=MODEL) + 3
    assert (
        _value(after, f"{sizes}_bucket", model=MODEL, le="2.0")
        - _value(before, f"{sizes}_bucket", model=MODEL, le="2.0")
        == 2
    )
    # each request was its own batch (sent one after the other): waited for, and timed
    for name in ("convscope_projection_batch_requests", "convscope_projection_queue_wait_seconds"):
        assert _value(after, f"{name}_count", model=MODEL) == _value(before, f"{name}_count", model=MODEL) + 2
    assert _value(after, "convscope_projection_batch_requests_sum", model=MODEL) == (
        _value(before, "convscope_projection_batch_requests_sum", model=MODEL) + 2
    )
    model_time = "convscope_projection_model_seconds"
    assert _value(after, f"{model_time}_count", model=MODEL) == _value(before, f"{model_time}_count", model=MODEL) + 2
    assert _value(after, f"{model_time}_sum", model=MODEL) > _value(before, f"{model_time}_sum", model=MODEL)
    backward = "convscope_engine_backward_passes_total"
    assert _value(after, backward, model=MODEL) >= _value(before, backward, model=MODEL) + 3
    assert _value(after, "convscope_engine_forward_passes_total", model=MODEL) >= 1
    assert _value(after, "convscope_engine_cache_bytes", model=MODEL) > 0
    assert ("convscope_jobs", (("state", "queued"),)) in after


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    client.get("/api/no-such-thing-12345")
    samples = _samples(client)
    assert not any("no-such-thing" in value for (_, labels) in samples for _, value in labels)
    assert _value(samples, "convscope_http_requests_total", method="GET", route="other", status="404") >= 1


def test_metrics_need_the_token_when_one_is_set() -> None:
    with TestClient(create_app(tiny_settings(token="s3cret-token-value"), loader=tiny_loader())) as client:
        wait_ready(client)
        assert client.get("/api/metrics").status_code == 401
        response = client.get("/api/metrics", headers={"Authorization": "Bearer s3cret-token-value"})
        assert response.status_code == 200
        assert any(f.name == "convscope_http_requests" for f in text_string_to_metric_families(response.text))
