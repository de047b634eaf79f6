"""A server that speaks Open WebUI's Pipelines protocol, built on the same answering path as the chat server:
a filter that puts retrieved Knowledge into any model's chat, and a pipe model that answers from it."""
