"""Data layer: reading images and masks, class maps, folder discovery, splits, augmentation
and PyTorch datasets."""

from pathseg.data.classes import AnyOf, ClassMap
from pathseg.data.datasets import SegmentationDataset, UnlabeledImageDataset
from pathseg.data.folders import (
    Sample,
    assign_groups,
    check_samples,
    discover_dataset,
    find_images,
    pair_images_and_masks,
    read_groups_csv,
)
from pathseg.data.io import (
    IMAGE_EXTENSIONS,
    LossyMaskWarning,
    image_size,
    read_image,
    read_label_image,
    write_image,
    write_mask,
)
from pathseg.data.splits import label_fraction_subset, train_val_split
from pathseg.data.transforms import (
    AugmentConfig,
    TrainTransform,
    build_train_transform,
    from_tensor,
    resize_pair,
    stain_jitter,
    to_tensor,
)

# synthetic generator: pathseg.data.synthetic

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnyOf",
    "AugmentConfig",
    "ClassMap",
    "LossyMaskWarning",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "UnlabeledImageDataset",
    "assign_groups",
    "build_train_transform",
    "check_samples",
    "discover_dataset",
    "find_images",
    "from_tensor",
    "image_size",
    "label_fraction_subset",
    "pair_images_and_masks",
    "read_groups_csv",
    "read_image",
    "read_label_image",
    "resize_pair",
    "stain_jitter",
    "to_tensor",
    "train_val_split",
    "write_image",
    "write_mask",
]
