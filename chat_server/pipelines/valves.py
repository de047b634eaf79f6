"""Valves: the settings of each pipeline that an Open WebUI admin reads and changes through Open WebUI.

They are kept in one JSON file (0600, replaced atomically), so a restart or a crash mid-write never loses
or half-writes what an admin set.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embed_server.state_file import read_locked, set_aside, write_atomic

EVERY_KNOWLEDGE = "*"


class PipeValves(BaseModel):
    model_config = ConfigDict(extra="forbid")

    knowledge: list[str] = Field(default=[EVERY_KNOWLEDGE], description="Knowledge base ids to answer from; "
                                 "'*': every Knowledge base the chatting user may read. Whatever is chosen, a "
                                 "user only ever gets what they may read.")
    top_k: int = Field(default=5, ge=1, le=50, description="Chunks that reach the prompt.")
    min_score: float = Field(default=0.0, ge=-1, le=1, description="Least cosine similarity (under the Knowledge "
                             "base's own embedding model) a chunk needs to be used.")


class FilterValves(PipeValves):
    # None by default: an admin names the models whose chats get Knowledge, so a private Knowledge base is
    # never sent along to a hosted model nobody chose for it.
    pipelines: list[str] = Field(default=[], description="The models whose chats get Knowledge: model ids, or "
                                 "'*' for all (hosted ones included: their provider then reads the chunks).")
    priority: int = Field(default=0, description="Order among filters: lower runs first.")
    # Chosen on SciFact's train claims with MiniLM (60 claims): the lowest relevant abstract scored 0.20, 95%
    # scored 0.31 or more. A model with another score scale needs its own value.
    min_score: float = Field(default=0.2, ge=-1, le=1, description="Least cosine similarity (under the Knowledge "
                             "base's own embedding model) a chunk needs: below it, the chat goes on unchanged.")


class ValvesInvalid(ValueError):
    """Values that the pipeline's valves do not accept (the message names the field, not the value)."""


class ValveStore:
    def __init__(self, path: Path, defaults: dict[str, type[PipeValves]]) -> None:
        self._path = path
        self._models = defaults
        self._values: dict[str, PipeValves] = {pid: model() for pid, model in defaults.items()}
        self._load()

    def get(self, pipeline_id: str) -> PipeValves:
        return self._values[pipeline_id]

    def update(self, pipeline_id: str, changes: dict) -> PipeValves:
        """The pipeline's valves with ``changes`` applied, saved before they take effect."""
        current = self._values[pipeline_id].model_dump()
        try:
            valves = self._models[pipeline_id].model_validate({**current, **changes})
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'valves'}: {e['msg']}" for e in error.errors())
            raise ValvesInvalid(problems) from None
        saved = {pid: value.model_dump() for pid, value in self._values.items()} | {pipeline_id: valves.model_dump()}
        write_atomic(self._path, json.dumps(saved, indent=1).encode())
        self._values[pipeline_id] = valves
        return valves

    def _load(self) -> None:
        data = read_locked(self._path)
        if data is None:
            return
        try:
            saved = json.loads(data)
            loaded = {pipeline_id: self._models[pipeline_id].model_validate(values)
                      for pipeline_id, values in saved.items() if pipeline_id in self._models}
            self._values |= loaded  # all of the file or none of it
        except (ValueError, ValidationError, AttributeError):
            set_aside(self._path, "pipeline valves unreadable: defaults in use")
