"""Models built by name: ``create_model("small_cnn", in_channels=1, num_classes=10, input_size=28)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from advcoreset.models.base import ImageClassifier
from advcoreset.models.cnn import small_cnn, trades_cnn
from advcoreset.models.resnet import ARCHITECTURES
from advcoreset.registry import Registry

MODELS: Registry[ImageClassifier] = Registry("model")
MODELS.register("small_cnn")(small_cnn)
MODELS.register("trades_cnn")(trades_cnn)


for _name, _fn in ARCHITECTURES.items():
    MODELS.register(_name)(_fn)


def available_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **kwargs: object) -> ImageClassifier:
    """Build a registered model. ``mean``/``std`` default to 0/1 per channel (no normalisation)."""
    mean = list(mean) if mean is not None else [0.0] * in_channels
    std = list(std) if std is not None else [1.0] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} entries, got {len(mean)}/{len(std)}")
    fn: Callable[..., ImageClassifier] = MODELS.get(name)
    return fn(in_channels=in_channels, num_classes=num_classes, input_size=input_size, mean=mean, std=std,
              **kwargs)


__all__ = ["ImageClassifier", "available_models", "create_model", "MODELS"]
