"""Pipeline valves survive restarts and bad input: saved whole before they take effect, refused when invalid
(the stored values unchanged), and a damaged file is set aside rather than stopping the server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chat_server.pipelines.valves import FilterValves, PipeValves, ValvesInvalid, ValveStore

KINDS = {"filter": FilterValves, "pipe": PipeValves}


def test_updates_are_kept_across_restarts_and_only_valid_ones_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "state" / "valves.json"
    store = ValveStore(path, KINDS)
    assert store.get("filter") == FilterValves()
    store.update("filter", {"knowledge": ["kb-1"], "top_k": 3})
    assert os.stat(path).st_mode & 0o777 == 0o600
    for bad in ({"top_k": 0}, {"min_score": 2}, {"knowledge": "kb-1"}, {"surprise": True}):
        with pytest.raises(ValvesInvalid):
            store.update("filter", bad)
    again = ValveStore(path, KINDS)
    assert again.get("filter").knowledge == ["kb-1"] and again.get("filter").top_k == 3
    assert again.get("pipe") == PipeValves()


def test_a_damaged_file_is_set_aside_and_defaults_serve(tmp_path: Path) -> None:
    path = tmp_path / "valves.json"
    path.write_text('{"filter": {"top_k": ')
    store = ValveStore(path, KINDS)
    assert store.get("filter") == FilterValves()
    assert not path.exists() and [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    store.update("pipe", {"top_k": 7})
    assert json.loads(path.read_text())["pipe"]["top_k"] == 7
