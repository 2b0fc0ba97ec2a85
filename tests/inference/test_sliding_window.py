import numpy as np
import pytest
import torch
from torch import nn

from pathseg.data.transforms import to_tensor
from pathseg.inference.evaluate import WindowSettings, segment
from pathseg.inference.sliding_window import predict_logits


class PixelModel(nn.Module):
    """A per-pixel model: tiling and blending must give exactly its whole-image output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("size", [(100, 150), (40, 50), (64, 64)])
def test_tiles_and_blending_reproduce_the_whole_image(size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    model = PixelModel().eval()
    tiled = predict_logits(model, to_tensor(image), tile_size=64, overlap=0.25)
    with torch.no_grad():
        whole = model(to_tensor(image)[None])[0]
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-4)


def test_segment_returns_native_resolution_when_model_works_at_half():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    labels, objects = segment(PixelModel().eval(), image, WindowSettings(tile_size=64), scale=0.5)
    assert objects.shape == (90, 130)
    assert labels.shape == (90, 130)
    assert set(np.unique(labels)) <= {0, 1}
