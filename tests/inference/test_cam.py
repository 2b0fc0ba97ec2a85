"""Batched Grad-CAM: the closed form at the last layer, batch independence, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError
from pathseg.inference.cam import grad_cams, layer_names
from pathseg.models import CAMClassifier, create_model


@pytest.fixture(scope="module")
def net() -> CAMClassifier:
    torch.manual_seed(0)
    model = CAMClassifier(encoder_depth=18, num_classes=3)
    # Non-trivial batch-norm statistics, so eval mode is not the identity on the features.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))
    return model.eval()


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_last_layer_grad_cam_is_the_class_map_over_its_area(net: CAMClassifier) -> None:
    """Pool then ``fc``: d y_c / d A_k = W_ck / (h w) everywhere, so Grad-CAM = (W A)_c / (h w)."""
    x = images(2)
    with torch.no_grad():
        class_maps = net.class_maps(x)  # (2, 3, 4, 4) at output stride 8
        expected_logits = net(x)
    assert class_maps.shape == (2, 3, 4, 4)
    h, w = class_maps.shape[-2:]
    expected = F.interpolate(class_maps / (h * w), size=(32, 32), mode="bilinear", align_corners=False)
    for layer in ("encoder.layer4", "dropout"):  # dropout is the identity in eval mode
        cams, logits = grad_cams(net, x, [layer])
        assert set(cams) == {layer} and cams[layer].shape == (2, 3, 32, 32)
        torch.testing.assert_close(cams[layer], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(logits, expected_logits)
    # Another output size resizes the same maps.
    cams, _ = grad_cams(net, x, ["encoder.layer4"], size=(4, 4))
    torch.testing.assert_close(cams["encoder.layer4"], class_maps / (h * w), rtol=1e-4, atol=1e-6)
    # No gradients leak into the weights and the result is detached.
    assert all(p.grad is None for p in net.parameters())
    assert not cams["encoder.layer4"].requires_grad


def test_a_batch_gives_the_same_cams_as_one_image_at_a_time(net: CAMClassifier) -> None:
    x = images(3, seed=2)
    layers = ["encoder.layer4", "encoder.layer3", "encoder.layer2"]
    batched, batched_logits = grad_cams(net, x, layers)
    for i in range(3):
        single, single_logits = grad_cams(net, x[i : i + 1], layers)
        torch.testing.assert_close(single_logits[0], batched_logits[i], rtol=1e-4, atol=1e-5)
        for layer in layers:
            torch.testing.assert_close(single[layer][0], batched[layer][i], rtol=1e-4, atol=1e-6)
    # The layers really differ (each is computed from its own activations).
    assert not torch.allclose(batched["encoder.layer4"], batched["encoder.layer2"])


def test_unknown_or_missing_layers_are_config_errors(net: CAMClassifier) -> None:
    with pytest.raises(ConfigError, match=r"unknown CAM layer\(s\) \['encoder.layer9'\]") as caught:
        grad_cams(net, images(1), ["encoder.layer4", "encoder.layer9"])
    assert "encoder.layer3" in str(caught.value)  # the message lists real names
    with pytest.raises(ConfigError, match="unknown CAM layer"):
        grad_cams(net, images(1), [""])
    with pytest.raises(ConfigError, match="at least one layer"):
        grad_cams(net, images(1), [])
    assert "encoder.layer4" in layer_names(net) and "encoder.layer4.0" not in layer_names(net)


def test_train_mode_model_is_refused() -> None:
    model = CAMClassifier(encoder_depth=18, num_classes=2)
    assert model.training
    with pytest.raises(ValueError, match="eval mode"):
        grad_cams(model, images(1), ["encoder.layer4"])


def test_cam_classifier_is_registered_and_pda_only_acts_in_training() -> None:
    model = create_model("cam_resnet18", in_channels=3, num_classes=4, dropout=0.0)
    assert isinstance(model, CAMClassifier) and model.config["name"] == "cam_resnet18"
    x = images(2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, pda_gamma=0.7), model(x))
    model.train()
    torch.manual_seed(0)
    plain = model(x)
    torch.manual_seed(0)
    assert not torch.allclose(model(x, pda_gamma=0.7), plain)
    with pytest.raises(ConfigError, match="output_stride"):
        CAMClassifier(output_stride=32)
