"""The model registry: the real default model, the paper's ZF net, torchvision models
offline, custom callables and weights files."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from convscope.engine import Engine
from convscope.errors import NotFoundError, WeightsUnavailableError
from convscope.models import load_model, torchvision_zoo
from convscope.models.efficientnet_lite import rename_lukemelas_keys, weights_path
from convscope.models.weights import read_state_dict
from convscope.models.zfnet import ZFNet, renormalise_filters
from convscope.samples import list_samples, load_sample

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def default_engine() -> Engine:
    return Engine(load_model(), device_name="cpu")


def test_lukemelas_keys_load_strictly_into_timm() -> None:
    import timm

    renamed = rename_lukemelas_keys(read_state_dict(weights_path()))
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    result = model.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.blocks[5][3].conv_pwl.weight, renamed["blocks.5.3.conv_pwl.weight"])


def test_default_model_knows_its_preprocessing_and_labels(default_engine: Engine) -> None:
    loaded = default_engine.model
    assert loaded.pretrained and loaded.num_classes == 1000 and loaded.input_size == 224
    assert loaded.labels[ESPRESSO] == "espresso"
    assert loaded.mean == (0.485, 0.456, 0.406)


def test_chelsea_is_a_cat(default_engine: Engine) -> None:
    top3 = default_engine.predict(default_engine.prepare(load_sample("chelsea")), top=3)
    assert CAT_CLASSES & {p.index for p in top3}


def test_coffee_is_espresso(default_engine: Engine) -> None:
    top1 = default_engine.predict(default_engine.prepare(load_sample("coffee")), top=1)[0]
    assert top1.index == ESPRESSO and top1.label == "espresso" and top1.probability > 0.5


def test_samples_are_real_photos() -> None:
    samples = {s.id: s for s in list_samples()}
    for needed in ("chelsea", "coffee", "astronaut", "rocket", "grace_hopper", "brick", "grass"):
        assert needed in samples
    image = load_sample("grace_hopper")
    assert image.mode == "RGB" and min(image.size) >= 300


def test_zfnet_has_the_papers_map_sizes() -> None:
    net = ZFNet()
    sizes = {}
    x = torch.zeros(1, 3, 224, 224)
    for name, layer in net.features.named_children():
        x = layer(x)
        sizes[name] = x.shape[-1]
    assert [sizes[k] for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")] == [
        110, 55, 26, 13, 13, 13, 13, 6,
    ]  # fmt: skip
    assert [sizes[k] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")] and net.features.conv1.out_channels == 96
    assert isinstance(net.features.norm1, nn.LocalResponseNorm)
    assert net.classifier.fc6.in_features == 6 * 6 * 256 and net.classifier.fc7.out_features == 4096
    assert isinstance(net.classifier.drop6, nn.Dropout) and net.classifier.drop6.p == 0.5


def test_renormalise_filters_only_touches_large_filters() -> None:
    net = ZFNet(widths=(8, 8, 8, 8, 8), fc_width=16, input_size=64, num_classes=4)
    conv = net.features.conv1
    with torch.no_grad():
        conv.weight.normal_(0, 0.05)
        conv.weight[0].mul_(10)  # RMS ~0.5
        conv.weight[1].mul_(3)  # RMS ~0.15
    small_before = conv.weight[2:].clone()
    rescaled = renormalise_filters(net, radius=0.1)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert rescaled >= 2
    assert float(rms.max()) <= 0.1 + 1e-6
    assert torch.allclose(rms[:2], torch.tensor([0.1, 0.1]), atol=1e-6)
    assert torch.equal(conv.weight[2:], small_before)


def test_torchvision_fails_fast_without_cache_or_network(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # There is no network here or in CI; make that explicit so the test never downloads.
    monkeypatch.setattr(torchvision_zoo, "_reachable", lambda url, timeout: False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("alexnet")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "--weights" in message and str(tmp_path) in message


def test_unreachable_host_is_detected_quickly() -> None:
    start = time.monotonic()
    assert not torchvision_zoo._reachable("https://127.0.0.1:1/x.pth", timeout=2.0)
    assert time.monotonic() - start < 5


def test_torchvision_weights_from_cache(tmp_path, monkeypatch) -> None:
    """A file in TORCH_HOME's hub cache is picked up without any network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision_zoo, "_reachable", lambda url, timeout: False)
    from torchvision.models import AlexNet_Weights, alexnet

    torch.manual_seed(7)
    reference = alexnet()
    cached = torchvision_zoo.cached_weights_file(AlexNet_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    loaded = load_model("alexnet")
    assert loaded.pretrained
    assert torch.equal(loaded.module.features[0].weight, reference.features[0].weight)


def test_weights_file_and_custom_callable(tmp_path) -> None:
    torch.manual_seed(3)
    source = ZFNet(num_classes=7, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=224)
    path = tmp_path / "zf.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model("fixtures.custom_models:small_zfnet", weights=str(path))
    assert loaded.pretrained and loaded.num_classes == 7 and loaded.labels[0] == "class 0"
    assert torch.equal(loaded.module.features.conv1.weight, source.features.conv1.weight)
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_bad_model_references() -> None:
    with pytest.raises(NotFoundError, match="unknown model"):
        load_model("not_a_model")
    with pytest.raises(NotFoundError, match="cannot import"):
        load_model("no_such_package_xyz:build")
    with pytest.raises(NotFoundError, match="no callable"):
        load_model("fixtures.custom_models:missing")


def test_bad_weights_files(tmp_path) -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_model("zfnet", weights=str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        load_model("zfnet", weights=str(garbage))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        load_model("zfnet", weights=str(wrong))
