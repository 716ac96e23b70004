"""The paper's Table 3 variants of the ZF net, zfnet-small, filter renormalisation after a step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convscope.models import load_model
from convscope.models.zfnet import (
    ZFNet,
    config_from_state_dict,
    load_zfnet_checkpoint,
    removable_layers,
    zfnet_small,
)
from convscope.studies.train import TrainConfig, build_model, sgd_step


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


FLAT = 6 * 6 * 256  # pool5 at 224×224
CONV12 = conv(3, 96, 7) + conv(96, 256, 5)
PAPER_VARIANTS = {
    (): CONV12 + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
    + linear(FLAT, 4096) + linear(4096, 4096) + linear(4096, 1000),
    ("conv3", "conv4"): CONV12 + conv(256, 256, 3) + linear(FLAT, 4096) + linear(4096, 4096) + linear(4096, 1000),
    ("fc7",): CONV12 + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
    + linear(FLAT, 4096) + linear(4096, 1000),
    ("fc6", "fc7"): CONV12 + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3) + linear(FLAT, 1000),
    ("conv3", "conv4", "fc6", "fc7"): CONV12 + conv(256, 256, 3) + linear(FLAT, 1000),
}  # fmt: skip


@pytest.mark.parametrize("remove", list(PAPER_VARIANTS), ids=lambda r: "-".join(r) or "full")
def test_removed_layers_still_connect_with_the_expected_parameter_count(remove: tuple[str, ...]) -> None:
    net = ZFNet(remove=remove).eval()
    assert sum(p.numel() for p in net.parameters()) == PAPER_VARIANTS[remove]
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    names = {name for name, _ in net.named_modules()}
    for layer in ("conv3", "conv4", "conv5"):
        assert (f"features.{layer}" in names) == (layer not in remove)
    for layer in ("fc6", "fc7"):
        assert (f"classifier.{layer}" in names) == (layer not in remove)
        assert (f"classifier.drop{layer[-1]}" in names) == (layer not in remove)  # dropout goes with its layer
    assert net.features.pool5.kernel_size == 3 and isinstance(net.classifier.fc8, nn.Linear)


def test_wider_and_narrower_variants() -> None:
    wide = ZFNet(widths=(96, 256, 512, 1024, 512), fc_width=2048, num_classes=10).eval()
    assert wide.features.conv4.out_channels == 1024 and wide.features.conv5.in_channels == 1024
    assert wide.classifier.fc6.in_features == 6 * 6 * 512 and wide.classifier.fc7.out_features == 2048
    with torch.no_grad():
        assert wide(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def test_layer_names_for_removal() -> None:
    assert removable_layers(["4", 3, "FC7", "fc6"]) == ("conv3", "conv4", "fc6", "fc7")
    for bad in ("conv1", "2", "fc8", "pool5", "8"):
        with pytest.raises(ValueError, match="cannot be removed"):
            removable_layers([bad])


def test_zfnet_small_keeps_the_topology_at_64_pixels() -> None:
    net = zfnet_small(num_classes=10).eval()
    sizes = {}
    x = torch.zeros(1, 3, 64, 64)
    for name, layer in net.features.named_children():
        x = layer(x)
        sizes[name] = x.shape[-1]
    assert [sizes[k] for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv5", "pool5")] == [
        30,
        15,
        6,
        3,
        3,
        3,
        1,
    ]
    assert isinstance(net.features.norm2, nn.LocalResponseNorm) and net.classifier.drop6.p == 0.5
    small = zfnet_small(remove=(3, 4, 6, 7))
    assert small.features.conv5.in_channels == small.features.conv2.out_channels


def test_checkpoints_rebuild_from_their_shapes(tmp_path) -> None:
    torch.manual_seed(0)
    net = zfnet_small(num_classes=4, widths=(8, 12, 16, 16, 8), fc_width=24, remove=("conv4", "fc7"))
    path = tmp_path / "epoch-3.pt"  # no model.json beside it: everything is inferred
    torch.save(net.state_dict(), path)
    config = config_from_state_dict(net.state_dict())
    assert config["remove"] == ["conv4", "fc7"] and config["num_classes"] == 4 and config["input_size"] == 64
    loaded = load_zfnet_checkpoint(path)
    assert torch.equal(loaded.features.conv5.weight, net.features.conv5.weight)
    via_registry = load_model("zfnet-small", weights=str(path), input_size=64)
    assert via_registry.num_classes == 4 and via_registry.pretrained
    assert load_model("zfnet-small", input_size=64).num_classes == 10


def test_renormalisation_after_a_step_caps_big_filters_and_leaves_the_rest() -> None:
    """After one SGD step (a large learning rate pushes filters out), no conv filter's
    RMS exceeds 0.1, and the filters the step left under 0.1 are exactly the step's."""
    config = TrainConfig(arch="zfnet-small", dropout=0.0)
    model = build_model(config, num_classes=10)
    with torch.no_grad():
        model.features.conv1.weight[:4].mul_(8.0)  # already over the radius before the step
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
    step = {"lr": 0.5, "momentum": 0.9}
    _, _, rescaled = sgd_step(model, torch.optim.SGD(model.parameters(), **step), x, y, radius=0.1)
    sgd_step(twin, torch.optim.SGD(twin.parameters(), **step), x, y, radius=0.0)  # the same step, unrenormalised

    over_seen = 0
    torch.set_grad_enabled(False)
    for (name, conv_), (_, raw) in zip(model.named_modules(), twin.named_modules(), strict=True):
        if not isinstance(conv_, nn.Conv2d):
            continue
        assert isinstance(raw, nn.Conv2d)
        rms = conv_.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
        raw_rms = raw.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
        assert float(rms.max()) <= 0.1 + 1e-6, name
        over = raw_rms > 0.1
        over_seen += int(over.sum())
        assert torch.equal(conv_.weight[~over], raw.weight[~over]), f"{name}: a filter under the radius changed"
        assert torch.allclose(rms[over], torch.full_like(rms[over], 0.1), atol=1e-6)
        assert torch.equal(conv_.bias, raw.bias)
    torch.set_grad_enabled(True)
    assert over_seen == rescaled >= 4
