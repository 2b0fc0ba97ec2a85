"""Instance post-processing on hand-built probability maps, and the evaluator scoring its objects."""

import numpy as np
import pytest
from scipy import ndimage

from pathseg.data.targets import hover_maps
from pathseg.inference.instances import InstanceSettings, hover_instances, separate_objects
from pathseg.metrics import SegmentationEvaluator, aji, panoptic_quality


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def three_channel(foreground, interior):
    """Probabilities (background, interior, boundary) with the given foreground and interior masks."""
    probs = np.zeros((3, *foreground.shape), np.float32)
    probs[0] = np.where(foreground, 0.1, 0.9)
    probs[1] = np.where(interior, 0.8, 0.05)
    probs[2] = 1.0 - probs[0] - probs[1]
    return probs


def touching_pair(shape=(40, 70)):
    """Two discs joined by a bridge: one connected foreground, two separate interiors."""
    left, right = disc(shape, (20, 20), 12), disc(shape, (20, 46), 12)
    bridge = np.zeros(shape, bool)
    bridge[18:23, 20:47] = True
    foreground = left | right | bridge
    interior = disc(shape, (20, 20), 7) | disc(shape, (20, 46), 7)
    return foreground, interior, left, right


def test_boundary_method_separates_touching_objects_and_keeps_the_foreground():
    foreground, interior, left, right = touching_pair()
    classes, instances = separate_objects(three_channel(foreground, interior), InstanceSettings("boundary"))
    np.testing.assert_array_equal(classes, foreground.astype(np.int64))
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(instances > 0, foreground)
    # Each disc's centre is in its own object, and each object is mostly its disc.
    assert instances[20, 20] != instances[20, 46]
    for centre, own in (((20, 20), left), ((20, 46), right)):
        obj = instances == instances[centre]
        assert (obj & own).sum() / obj.sum() > 0.9


def test_components_method_merges_them():
    foreground, _, _, _ = touching_pair()
    probs = np.stack([np.where(foreground, 0.2, 0.8), np.where(foreground, 0.8, 0.2)])
    classes, instances = separate_objects(probs, InstanceSettings("components"))
    np.testing.assert_array_equal(classes, foreground.astype(np.int64))
    assert instances.max() == 1


def test_min_area_drops_small_objects_from_both_maps_and_orphans_become_objects():
    shape = (40, 60)
    big = disc(shape, (20, 15), 10)
    speck = disc(shape, (5, 55), 1)  # 5 pixels
    orphan = disc(shape, (25, 45), 6)  # foreground with no interior above the threshold
    foreground = big | speck | orphan
    probs = three_channel(foreground, disc(shape, (20, 15), 6) | speck)
    classes, instances = separate_objects(probs, InstanceSettings("boundary", min_area=20))
    assert instances.max() == 2
    assert not classes[speck].any() and not instances[speck].any()
    assert (instances[orphan] > 0).all() and len(np.unique(instances[orphan])) == 1
    np.testing.assert_array_equal(classes > 0, instances > 0)


def test_boundary_needs_three_channels_and_a_known_method():
    with pytest.raises(ValueError, match="3 channels"):
        separate_objects(np.zeros((2, 4, 4)), InstanceSettings("boundary"))
    with pytest.raises(ValueError, match="unknown instance method"):
        separate_objects(np.zeros((2, 4, 4)), InstanceSettings("magic"))


def test_evaluator_scores_objects_of_the_given_instance_map():
    foreground, interior, left, right = touching_pair()
    truth = np.zeros(foreground.shape, np.int64)
    truth[left] = 1
    truth[right] = 1
    truth[:, 32:34] = 0  # the ground truth keeps the two glands apart by a thin gap
    merged_prediction = foreground.astype(np.int64)  # one blob: semantic prediction
    _, separated = separate_objects(three_channel(foreground, interior), InstanceSettings("boundary"))

    plain = SegmentationEvaluator(["background", "gland"])
    merged = plain.update(merged_prediction, truth)
    aware = SegmentationEvaluator(["background", "gland"])
    split = aware.update(merged_prediction, truth, pred_instances=separated)
    # The merged blob has one partner gland (TP), the other gland is missed (FN): F1 = 2/(2+0+1).
    assert merged["object_f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert split["object_f1"] == pytest.approx(1.0)
    assert split["dice"] == merged["dice"]  # pixel metrics do not depend on the instance map


# ------------------------------------------------------------------------ HoVer post-processing


def _touching_nuclei() -> np.ndarray:
    """Hand-made nuclei: two discs that touch along a line, a lone ellipse, a speck."""
    yy, xx = np.mgrid[0:64, 0:64]
    instances = np.zeros((64, 64), dtype=np.int32)
    instances[(yy - 20) ** 2 + (xx - 16) ** 2 <= 81] = 1
    instances[((yy - 20) ** 2 + (xx - 33) ** 2 <= 81) & (xx > 25)] = 2  # flattened against disc 1
    instances[((yy - 46) / 6.0) ** 2 + ((xx - 40) / 11.0) ** 2 <= 1] = 3
    instances[58:60, 5:7] = 4  # 4 px: under min_area
    return instances


def test_hover_post_processing_splits_touching_nuclei_from_perfect_maps() -> None:
    truth = _touching_nuclei()
    assert ndimage.label(truth > 0)[0].max() == 3  # the two discs form one component
    predicted = hover_instances((truth > 0).astype(np.float32), hover_maps(truth))
    assert predicted.dtype == np.int32 and predicted.max() == 3  # the speck is dropped
    kept = np.where(truth == 4, 0, truth)
    assert aji(predicted, kept) > 0.95
    assert panoptic_quality(predicted, kept)["tp"] == 3


def test_hover_post_processing_without_hv_cues_keeps_connected_nuclei_whole() -> None:
    truth = _touching_nuclei()
    predicted = hover_instances((truth > 0).astype(np.float32), np.zeros((2, 64, 64), np.float32))
    # No sign change in flat maps: the touching pair stays one object, nothing is lost.
    assert predicted.max() == 2
    assert ((predicted > 0) == ((truth > 0) & (truth != 4))).all()


def test_hover_post_processing_of_an_empty_prediction() -> None:
    predicted = hover_instances(np.zeros((16, 16)), np.zeros((2, 16, 16)))
    assert predicted.shape == (16, 16) and predicted.max() == 0
    with pytest.raises(ValueError, match="hv must be"):
        hover_instances(np.zeros((16, 16)), np.zeros((2, 8, 8)))
