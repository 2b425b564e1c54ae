"""Settings (config.toml) and policy loading with strict validation."""

from gateway.config.loader import ConfigError, load_settings
from gateway.config.schema import Settings

__all__ = ["ConfigError", "Settings", "load_settings"]
