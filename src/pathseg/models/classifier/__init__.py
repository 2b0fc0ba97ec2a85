"""Multi-label patch classifier with class activation maps (weak supervision)."""

from pathseg.models.classifier.model import CAMClassifier, pda_attention

__all__ = ["CAMClassifier", "pda_attention"]
