"""Correspondence Δ (paper Fig. 8 / Table 1): Hamming of sign changes, boxes, annotations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.nets import circular_net, engine_for
from convscope.analysis.correspondence import (
    CorrespondenceResult,
    check_box,
    correspondence,
    demo_annotation,
    draw_random_boxes,
    format_table,
    hamming_matrix,
    load_annotation,
    nonzero_sign_delta,
    occluded,
    parse_parts,
    random_box_p_value,
    random_boxes,
    sign_hamming_delta,
)
from convscope.analysis.features import extract_features, resolve_feature
from convscope.api.schemas import CorrespondenceResponse
from convscope.engine import Engine
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.samples import list_samples
from convscope.tasks import CallbackTask


def correspondence_response(result: CorrespondenceResult) -> dict[str, Any]:
    """The JSON the API's job and `convscope correspond --json` give for a result."""
    return CorrespondenceResponse.from_result(result).model_dump(mode="json")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return engine_for(circular_net(), size=64)


def noise(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---- Δ -------------------------------------------------------------------------------------------
def test_delta_on_hand_made_eps_equals_a_hand_computation() -> None:
    eps = np.array(
        [
            [0.5, -2.0, 0.0, 3.0, 1.0],  # signs + - 0 + +
            [1.0, 2.0, 0.0, -1.0, 4.0],  # signs + + 0 - +
            [-3.0, -1.0, 2.0, 1.0, 0.5],  # signs - - + + +
        ]
    )
    # H(0,1): positions 1, 3 differ -> 2/5; H(0,2): positions 0, 2 -> 2/5; H(1,2): positions 0, 1, 2, 3 -> 4/5
    assert hamming_matrix(eps) == pytest.approx(np.array([[0, 0.4, 0.4], [0.4, 0, 0.8], [0.4, 0.8, 0]]))
    assert sign_hamming_delta(eps) == pytest.approx((0.4 + 0.4 + 0.8) / 3)
    assert sign_hamming_delta(torch.tensor(eps)) == pytest.approx(1.6 / 3)
    assert sign_hamming_delta(np.array([[1.0, -1.0], [2.0, -5.0]])) == 0.0  # same signs
    assert sign_hamming_delta(np.array([[1.0, -1.0], [-2.0, 5.0]])) == 1.0  # every sign flipped
    with pytest.raises(InvalidRequestError, match="two images"):
        sign_hamming_delta(np.ones((1, 3)))


# ---- boxes ----------------------------------------------------------------------------------------------
def test_random_boxes_are_reproducible_and_never_leave_the_image() -> None:
    parts = {"eye": [(10, 10, 30, 20), (0, 0, 64, 64)], "nose": [(5, 5, 1, 1), (3, 40, 63, 7)]}
    first = draw_random_boxes(parts, 64, draws=50, seed=7)
    assert first == draw_random_boxes(parts, 64, draws=50, seed=7)
    assert first != draw_random_boxes(parts, 64, draws=50, seed=8)
    positions = set()
    for draw in first:
        for part, boxes in draw.items():
            for (x, y, w, h), original in zip(boxes, parts[part], strict=True):
                assert (w, h) == original[2:]
                assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
                positions.add((x, y, w, h))
    assert len(positions) > 50  # really random positions
    assert random_boxes([(64, 64)], 64, np.random.default_rng(0)) == [(0, 0, 64, 64)]


@pytest.mark.parametrize(
    "box", [[-1, 0, 10, 10], [0, -3, 10, 10], [60, 0, 5, 10], [0, 55, 10, 10], [0, 0, 65, 1], [100, 100, 4, 4]]
)
def test_boxes_outside_the_image_are_refused_with_422(box: list[int]) -> None:
    with pytest.raises(InvalidRequestError, match="leaves the 64×64 image") as caught:
        check_box(box, 64, "part 'nose' in image 'a'")
    assert caught.value.status_code == 422
    assert "part 'nose' in image 'a'" in str(caught.value)


@pytest.mark.parametrize(
    ("box", "message"),
    [([0, 0, 0, 5], "at least 1×1"), ([0, 0, 5], r"\[x, y, width, height\]"), ([0, 0, 2.5, 3], "whole")],
)
def test_malformed_boxes_are_refused(box: list[float], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        check_box(box, 64, "here")


def test_occluded_sets_the_box_to_the_mean_colour_only() -> None:
    tensor = torch.randn(1, 3, 16, 16)
    copy = occluded(tensor, (2, 3, 4, 5))
    assert (copy[..., 3:8, 2:6] == 0).all()
    copy[..., 3:8, 2:6] = tensor[..., 3:8, 2:6]
    assert torch.equal(copy, tensor)


# ---- annotations -------------------------------------------------------------------------------------------
def test_demo_annotation_covers_sample_photos_with_faces() -> None:
    annotation = demo_annotation(224)
    ids = {sample.id for sample in list_samples()}
    assert {"astronaut", "grace_hopper"} <= set(annotation["images"]) <= ids
    names, parts = parse_parts(annotation, None, 224)
    assert names == annotation["images"]
    assert {"left_eye", "right_eye", "nose"} <= set(parts)
    for boxes in parts.values():
        assert len(boxes) == len(names)
    # eyes side by side, the nose below the eyes' top, per face
    for i in range(len(names)):
        left, right, nose = parts["left_eye"][i], parts["right_eye"][i], parts["nose"][i]
        assert left[0] + left[2] <= right[0] + 2
        assert nose[1] > min(left[1], right[1])
    scaled = demo_annotation(112)
    _, half = parse_parts(scaled, None, 112)
    assert half["nose"][0] == tuple(round(v / 2) for v in parts["nose"][0])


def test_parse_parts_lists_mappings_and_rescaling() -> None:
    listed = {"images": ["a", "b"], "parts": {"eye": [[0, 0, 4, 4], [2, 2, 4, 4]]}}
    assert parse_parts(listed, None, 64) == (["a", "b"], {"eye": [(0, 0, 4, 4), (2, 2, 4, 4)]})
    mapped = {"size": 32, "parts": {"eye": {"b": [1, 1, 2, 2], "a": [0, 0, 4, 4]}}}
    assert parse_parts(mapped, ["a", "b"], 64) == (["a", "b"], {"eye": [(0, 0, 8, 8), (2, 2, 4, 4)]})
    outside = {"size": 32, "parts": {"eye": {"a": [30, 0, 4, 4], "b": [0, 0, 4, 4]}}}
    with pytest.raises(InvalidRequestError, match=r"part 'eye' in image 'a'.*leaves the 32×32"):
        parse_parts(outside, ["a", "b"], 64)
    with pytest.raises(InvalidRequestError, match="no box for image"):
        parse_parts(mapped, ["a", "c"], 64)
    with pytest.raises(InvalidRequestError, match="at least two images"):
        parse_parts(listed, ["a"], 64)
    with pytest.raises(InvalidRequestError, match="2 boxes for 3 images"):
        parse_parts(listed, ["a", "b", "c"], 64)
    with pytest.raises(NotFoundError):
        load_annotation("/no/such/parts.json")


# ---- the study -------------------------------------------------------------------------------------------------
def test_same_image_same_box_gives_delta_zero_and_random_boxes_do_not(engine: Engine) -> None:
    prepared = engine.prepare(noise(1))
    images = [("a", prepared), ("b", prepared), ("c", prepared)]
    parts = {"patch": [(20, 20, 12, 12)] * 3}
    result = correspondence(engine, images, parts, layers=["features.conv2", "penultimate"], draws=3, seed=1)
    assert result.layers == ["features.conv2", "fc2:input"]
    for layer in result.layers:
        assert result.part_delta["patch"][layer] == 0.0
    assert max(result.random_summary("features.conv2").values) > 0.01
    assert result.forward_passes == 3 * (1 + 1 + 3)


def test_delta_matches_the_definition_on_the_features(engine: Engine) -> None:
    images = [(f"n{i}", engine.prepare(noise(10 + i))) for i in range(3)]
    parts = {"left": [(0, 0, 16, 16), (4, 4, 16, 16), (8, 0, 20, 10)], "right": [(40, 40, 10, 10)] * 3}
    result = correspondence(engine, images, parts, layers=["features.relu2"], draws=2, seed=3, batch_size=3)
    spec = resolve_feature(engine, "features.relu2")
    eps = []
    for (_, prepared), box in zip(images, parts["left"], strict=True):
        _, feats = extract_features(engine, torch.cat([prepared.tensor, occluded(prepared.tensor, box)]), [spec])
        eps.append(feats[spec.name][0] - feats[spec.name][1])
    assert result.part_delta["left"]["features.relu2"] == pytest.approx(sign_hamming_delta(torch.stack(eps)), abs=1e-9)

    body = correspondence_response(result)
    rows = [row["occlusion"] for row in body["table"]]
    assert rows == ["left", "right", "random"]
    random_row = body["table"][-1]["delta"]["features.relu2"]
    values = body["random"]["delta"]["features.relu2"]["values"]
    assert len(values) == 2 and random_row["mean"] == pytest.approx(np.mean(values))
    assert random_row["std"] == pytest.approx(np.std(values, ddof=1))
    assert body["random"]["boxes"] == [
        {part: [list(b) for b in boxes] for part, boxes in draw.items()} for draw in result.random_boxes
    ]
    text = format_table(result)
    assert "random" in text and "±" in text and "features.relu2" in text


def test_parts_outside_the_image_are_refused_before_any_pass(engine: Engine) -> None:
    images = [("a", engine.prepare(noise(1))), ("b", engine.prepare(noise(2)))]
    passes: list[int] = []
    with pytest.raises(InvalidRequestError, match="part 'eye' in image 'b'") as caught:
        correspondence(
            engine, images, {"eye": [(0, 0, 8, 8), (60, 60, 8, 8)]}, task=CallbackTask(lambda d, t: passes.append(d))
        )
    assert caught.value.status_code == 422
    assert passes == []
    with pytest.raises(InvalidRequestError, match="draws"):
        correspondence(engine, images, {"eye": [(0, 0, 8, 8)] * 2}, draws=0)


# ---- statistics ------------------------------------------------------------------------------------------------
def test_nonzero_delta_ignores_components_that_did_not_move_in_both() -> None:
    eps = np.array(
        [
            [1.0, 0.0, -2.0, 0.0],  # + 0 - 0
            [3.0, 0.0, -1.0, 5.0],  # + 0 - +
            [-1.0, 2.0, 0.0, 0.0],  # - + 0 0
        ]
    )
    # plain: H(0,1) 1/4, H(0,2) 3/4, H(1,2) 4/4; non-zero in both: (0,1) {0,2} -> 0, (0,2) {0} -> 1, (1,2) {0} -> 1
    assert sign_hamming_delta(eps) == pytest.approx((0.25 + 0.75 + 1.0) / 3)
    assert nonzero_sign_delta(eps) == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert np.isnan(nonzero_sign_delta(np.array([[1.0, 0.0], [0.0, 1.0]])))


def test_random_box_p_value_follows_the_plus_one_rule() -> None:
    assert random_box_p_value(0.5, [0.6, 0.7, 0.8]) == pytest.approx(1 / 4)  # lower than every draw
    assert random_box_p_value(0.65, [0.6, 0.7, 0.8]) == pytest.approx(2 / 4)
    assert random_box_p_value(0.9, [0.6, 0.7, 0.8]) == 1.0
    assert random_box_p_value(0.6, [0.6, float("nan")]) == 1.0  # ties count against the part; NaN draws dropped
    assert np.isnan(random_box_p_value(float("nan"), [0.5]))


def test_p_values_are_in_range_and_deterministic_for_a_seed(engine: Engine) -> None:
    images = [(f"n{i}", engine.prepare(noise(20 + i))) for i in range(3)]
    parts = {"corner": [(0, 0, 12, 12)] * 3, "same": [(30, 30, 10, 10)] * 3}
    runs = [correspondence(engine, images, parts, layers=["features.relu2"], draws=9, seed=5) for _ in range(2)]
    bodies = [correspondence_response(run) for run in runs]
    for part in bodies[0]["parts"]:
        p = part["p_value"]["features.relu2"]
        assert 1 / 10 <= p <= 1.0
        assert part["p_value_nonzero"]["features.relu2"] is None or 0 < part["p_value_nonzero"]["features.relu2"] <= 1
    assert [p["p_value"] for p in bodies[0]["parts"]] == [p["p_value"] for p in bodies[1]["parts"]]
    assert [p["delta_nonzero"] for p in bodies[0]["parts"]] == [p["delta_nonzero"] for p in bodies[1]["parts"]]
    assert bodies[0]["n"] == {"images": 3, "pairs": 3, "draws": 9}
    assert "p " in format_table(runs[0]) and "3 pairs" in format_table(runs[0])
    other = correspondence_response(correspondence(engine, images, parts, layers=["features.relu2"], draws=9, seed=6))
    assert other["random"]["boxes"] != bodies[0]["random"]["boxes"]


def test_faces_annotation_loads_aligned_lfw_faces() -> None:
    from convscope.analysis.commands import source_image

    annotation = load_annotation("faces")
    names, parts = parse_parts(annotation, None, 224)
    assert names == [f"lfw:{i}" for i in range(16)] and set(parts) == {"left_eye", "right_eye", "nose"}
    assert parts["left_eye"][0] == (45, 81, 54, 27)  # [5, 9, 6, 3] in the 25×25 frame, ×8.96
    image = source_image("lfw:3")
    assert image.size == (25, 25) and image.mode == "RGB"
    with pytest.raises(NotFoundError, match="lfw:0"):
        source_image("lfw:100")


def test_random_nonzero_summary_is_json_even_when_nothing_moved(engine: Engine) -> None:
    import json

    images = [(f"n{i}", engine.prepare(noise(30 + i))) for i in range(2)]
    result = correspondence(engine, images, {"p": [(0, 0, 8, 8)] * 2}, layers=["features.relu2"], draws=3, seed=0)
    body = correspondence_response(result)
    summary = body["random"]["delta_nonzero"]["features.relu2"]
    assert summary["values"] == [] or len(summary["values"]) == 3
    json.dumps(body, allow_nan=False)
    result.random_delta_nonzero = [{"p": {"features.relu2": float("nan")}} for _ in range(3)]
    assert result.random_summary("features.relu2", nonzero=True).mean is None
    assert correspondence_response(result)["random"]["delta_nonzero"]["features.relu2"]["mean"] is None
