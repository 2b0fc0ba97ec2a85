"""Inference: sliding-window prediction over whole images."""

from pathseg.inference.sliding_window import predict_image, predict_logits

__all__ = ["predict_image", "predict_logits"]
