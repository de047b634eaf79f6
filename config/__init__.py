"""Settings for the embeddings server and the vector bridge: one object, one place."""

from config.settings import ModelSpec, Settings, load_settings

__all__ = ["ModelSpec", "Settings", "load_settings"]
