"""Data layer: reading images and masks, class maps, folder discovery, splits, augmentation
and PyTorch datasets."""

from importlib import import_module
from typing import Any

# Names are imported on first use (PEP 562), so `import pathseg.data.io` (slide tools, the
# synthetic slide writer) does not pay for torch, which datasets and transforms import.
_HOME = {
    "MultiSample": "annotators",
    "MultiAnnotatorDataset": "annotators",
    "bubil_class_map": "annotators",
    "check_multi_samples": "annotators",
    "discover_multi_annotator": "annotators",
    "AnyOf": "classes",
    "ClassMap": "classes",
    "SegmentationDataset": "datasets",
    "UnlabeledImageDataset": "datasets",
    "Sample": "folders",
    "assign_groups": "folders",
    "check_samples": "folders",
    "discover_dataset": "folders",
    "find_images": "folders",
    "pair_images_and_masks": "folders",
    "read_groups_csv": "folders",
    "IMAGE_EXTENSIONS": "io",
    "LossyMaskWarning": "io",
    "image_size": "io",
    "read_image": "io",
    "read_label_image": "io",
    "write_image": "io",
    "write_mask": "io",
    "label_fraction_subset": "splits",
    "train_val_split": "splits",
    "AugmentConfig": "transforms",
    "TrainTransform": "transforms",
    "build_train_transform": "transforms",
    "from_tensor": "transforms",
    "resize_pair": "transforms",
    "stain_jitter": "transforms",
    "to_tensor": "transforms",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'pathseg.data' has no attribute {name!r}")
    return getattr(import_module(f"pathseg.data.{_HOME[name]}"), name)


# synthetic generator: pathseg.data.synthetic

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnyOf",
    "AugmentConfig",
    "ClassMap",
    "LossyMaskWarning",
    "MultiAnnotatorDataset",
    "MultiSample",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "UnlabeledImageDataset",
    "assign_groups",
    "bubil_class_map",
    "build_train_transform",
    "check_multi_samples",
    "check_samples",
    "discover_dataset",
    "discover_multi_annotator",
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
