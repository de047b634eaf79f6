"""RAG chat over the shared Knowledge: retrieval -> grounded prompt -> generator, OpenAI-compatible."""

__version__ = "0.1.0"
