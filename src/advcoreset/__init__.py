"""advcoreset: adversarial coreset selection for efficient robust training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from advcoreset.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Config", "ConfigError", "load_config", "load_model"]
__version__ = "0.1.0"


# io (issue 12): imported lazily so `import advcoreset` (and `advcoreset --version`) does not load torch
def load_model(folder: Any, device: Any = "cpu") -> nn.Module:
    """Rebuild an exported model (a run folder, or ``advcoreset export``'s --out) with its weights, in eval
    mode: (B, C, H, W) pixels in [0, 1] -> (B, num_classes) logits. See ``advcoreset.models.export``."""
    from advcoreset.models.export import load_model as _load

    return _load(folder, device)
