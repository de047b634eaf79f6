"""OpenAI-format embeddings API served from local transformer models."""

__version__ = "0.1.0"
