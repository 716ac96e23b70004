"""Samples, uploads and the bounded upload store."""

from __future__ import annotations

import resource
import string
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.helpers import MODEL, decode, jpeg, png, tiny_loader, tiny_settings, wait_ready
from convscope.api import create_app
from convscope.api.settings import Settings
from convscope.engine import Engine
from convscope.samples import get_sample, list_samples, load_sample

URLSAFE = set(string.ascii_letters + string.digits + "-_")


def upload(client: TestClient, data: bytes, name: str = "photo.png", content_type: str = "image/png"):  # type: ignore[no-untyped-def]
    return client.post("/api/images", files={"file": (name, data, content_type)})


# ---- samples ----------------------------------------------------------------------------
def test_samples_list_the_bundled_photos_with_their_sizes(client: TestClient) -> None:
    response = client.get("/api/samples")
    assert response.status_code == 200
    rows = response.json()
    assert {row["id"] for row in rows} == {sample.id for sample in list_samples()}
    assert "chelsea" in {row["id"] for row in rows}
    for row in rows:
        with Image.open(get_sample(row["id"]).path) as image:
            assert (row["width"], row["height"]) == image.size
        assert row["name"]
        assert row["thumbnail_url"] == f"/api/samples/{row['id']}/thumbnail.png"


def test_sample_thumbnail_is_a_small_square_png(client: TestClient) -> None:
    response = client.get("/api/samples/coffee/thumbnail.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"].startswith('"')
    assert "public" in response.headers["cache-control"]
    image = decode(response.content)
    assert image.size == (96, 96)
    assert client.get("/api/samples/nope/thumbnail.png").status_code == 404


def test_image_is_the_model_input(client: TestClient, engine: Engine) -> None:
    response = client.get("/api/images/chelsea", params={"model": MODEL})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = decode(response.content)
    assert image.size == (224, 224)
    assert image.mode == "RGB"
    expected = engine.prepare(load_sample("chelsea")).display
    assert image.tobytes() == expected.tobytes()
    # the default model when none is named
    assert client.get("/api/images/chelsea").content == response.content


def test_image_errors(client: TestClient) -> None:
    assert client.get("/api/images/no-such-image").status_code == 404
    unknown_model = client.get("/api/images/chelsea", params={"model": "vgg16"})
    assert unknown_model.status_code == 404
    assert "vgg16" in unknown_model.json()["detail"]


def test_image_ids_are_never_paths(client: TestClient) -> None:
    for image_id in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "chelsea.png", "..%2Fchelsea"):
        response = client.get(f"/api/images/{image_id}")
        assert response.status_code == 404, image_id


# ---- uploads -----------------------------------------------------------------------------
def test_upload_a_photo_and_use_it(client: TestClient, engine: Engine) -> None:
    photo = load_sample("astronaut")
    response = upload(client, jpeg(photo), "astronaut.jpg", "image/jpeg")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == photo.size
    assert set(body["id"]) <= URLSAFE and len(body["id"]) >= 20
    assert response.headers["location"] == f"/api/images/{body['id']}"

    image = client.get(f"/api/images/{body['id']}")
    assert image.status_code == 200
    assert decode(image.content).size == (224, 224)
    assert "private" in image.headers["cache-control"]

    predictions = client.get(f"/api/models/{MODEL}/images/{body['id']}/predictions").json()
    expected = engine.predict(engine.prepare(decode(jpeg(photo)).convert("RGB")), 5)
    assert [p["index"] for p in predictions] == [p.index for p in expected]


def test_upload_of_the_same_pixels_gives_the_same_predictions_as_the_sample(client: TestClient) -> None:
    with open(get_sample("chelsea").path, "rb") as file:
        data = file.read()
    image_id = upload(client, data).json()["id"]
    uploaded = client.get(f"/api/models/{MODEL}/images/{image_id}/predictions").json()
    sample = client.get(f"/api/models/{MODEL}/images/chelsea/predictions").json()
    assert uploaded == sample


def test_body_over_the_limit_is_413_before_reading(client: TestClient, api_settings: Settings) -> None:
    data = b"\x89PNG" + b"\0" * (api_settings.max_upload_bytes + 10)
    response = upload(client, data)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_chunked_body_over_the_limit_is_413_while_reading(client: TestClient, api_settings: Settings) -> None:
    boundary = "convscopeboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunk = b"\0" * (1 << 20)
    sent = {"bytes": 0}

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(api_settings.max_upload_bytes // len(chunk) + 3):
            sent["bytes"] += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/images",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


@pytest.mark.parametrize(
    "data",
    [b"this is plain text, not an image", b"", b"GIF89a" + b"\x00" * 5, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["text", "empty", "gif-header-only", "png-signature-only"],
)
def test_not_an_image_is_415(client: TestClient, data: bytes) -> None:
    response = upload(client, data, "file.png")
    assert response.status_code == 415, response.text
    assert "image" in response.json()["detail"]


def test_truncated_image_is_415(client: TestClient) -> None:
    data = jpeg(load_sample("coffee"))
    response = upload(client, data[: len(data) // 2], "coffee.jpg", "image/jpeg")
    assert response.status_code == 415
    assert "truncated" in response.json()["detail"] or "decoded" in response.json()["detail"]
    data = png(load_sample("coffee"))
    response = upload(client, data[: len(data) // 2])
    assert response.status_code == 415


def _blank_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of zeros, built row by row: megapixels on paper, kilobytes on the wire."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 7_000], ids=["20000x20000", "7000x7000"])
def test_huge_image_is_refused_without_decoding(client: TestClient, api_settings: Settings, side: int) -> None:
    data = _blank_png(side, side)
    assert len(data) < 1_000_000 and side * side > api_settings.max_pixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = upload(client, data, "huge.png")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert response.status_code == 413, response.text
    assert "pixels" in response.json()["detail"] or "too large" in response.json()["detail"]
    # Decoding would need side² bytes (≥ 49 MB); the peak resident size barely moves.
    assert (after - before) * 1024 < 32 * 1024 * 1024


def test_animated_gif_gives_its_first_frame(client: TestClient) -> None:
    red = Image.new("RGB", (64, 48), (220, 20, 20))
    blue = Image.new("RGB", (64, 48), (20, 20, 220))
    from io import BytesIO

    buffer = BytesIO()
    red.save(buffer, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    response = upload(client, buffer.getvalue(), "anim.gif", "image/gif")
    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["height"]) == (64, 48)
    image = decode(client.get(f"/api/images/{response.json()['id']}").content).convert("RGB")
    r, g, b = tuple(image.getpixel((112, 112)))  # type: ignore[arg-type]
    assert r > 180 and b < 60, (r, g, b)


def test_upload_without_a_file_field_is_422(client: TestClient) -> None:
    response = client.post("/api/images", data={"other": "x"})
    assert response.status_code == 422
    assert "file" in response.json()["detail"]
    response = client.post("/api/images", json={"file": "/etc/passwd"})
    assert response.status_code == 422


# ---- the store ---------------------------------------------------------------------------
def test_store_keeps_at_most_n_images_least_recently_used_first() -> None:
    app = create_app(tiny_settings(store_max_images=3), loader=tiny_loader())
    with TestClient(app) as client:
        wait_ready(client)
        photo = png(Image.new("RGB", (40, 30), (10, 200, 30)))
        ids = [upload(client, photo).json()["id"] for _ in range(3)]
        assert client.get(f"/api/images/{ids[0]}").status_code == 200  # ids[0] is now the most recent
        ids.append(upload(client, photo).json()["id"])  # evicts ids[1], the least recently used
        assert client.get(f"/api/images/{ids[1]}").status_code == 404
        for image_id in (ids[0], ids[2], ids[3]):
            assert client.get(f"/api/images/{image_id}").status_code == 200
        assert len(app.state.convscope.store) == 3


def test_store_keeps_at_most_its_byte_budget() -> None:
    image = Image.new("RGB", (100, 100), (200, 200, 0))  # 30 000 decoded bytes
    app = create_app(tiny_settings(store_max_bytes=70_000), loader=tiny_loader())
    store = app.state.convscope.store
    with TestClient(app) as client:
        wait_ready(client)
        ids = [upload(client, png(image)).json()["id"] for _ in range(3)]
        assert store.nbytes <= 70_000 and len(store) == 2
        assert client.get(f"/api/images/{ids[0]}").status_code == 404
        assert client.get(f"/api/images/{ids[2]}").status_code == 200
        too_big = upload(client, png(Image.new("RGB", (200, 200))))
        assert too_big.status_code == 413
        assert "store" in too_big.json()["detail"]


def test_upload_ids_are_random_and_unguessable() -> None:
    app = create_app(tiny_settings(store_max_images=100), loader=tiny_loader())
    with TestClient(app) as client:
        photo = png(Image.new("RGB", (8, 8)))
        ids = [upload(client, photo).json()["id"] for _ in range(40)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) >= 22 and set(i) <= URLSAFE for i in ids)
    # no shared prefixes or counters: characters at each position vary across ids
    for position in range(8):
        assert len({i[position] for i in ids}) > 10
