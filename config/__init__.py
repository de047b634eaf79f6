"""Settings for the embeddings server and the vector bridge: one object, one place."""

from config.settings import ModelSpec, Settings, SettingsError, load_settings

__all__ = ["ModelSpec", "Settings", "SettingsError", "load_settings"]
