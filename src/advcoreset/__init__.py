"""advcoreset: adversarial coreset selection for efficient robust training."""

from advcoreset.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
