"""Turn a transformers encoder into an ONNX graph for ONNX Runtime, once, cached beside the models.

The recipe: export with eager attention (the pattern ONNX Runtime's BERT optimizer recognises),
fuse embeddings, attention, GELU and layer norms, and for ``quantize = "int8"`` store every
linear layer's weights as int8 in blocks of 128 with their own scales (MatMulNBits, 8 bits) run
with int8 arithmetic (accuracy level 4: activations quantized per block of 128 as well). The fused
attention keeps fp32 weights. Measured on a 2-core AVX-512 VNNI CPU (README, "Devices and
runtimes"): per-tensor dynamic int8 (quantize_dynamic) is faster but put short queries at cosine
0.96 to fp32; blocks keep every text above 0.999.

The cache key covers the weights, the recipe and the library versions, so a changed model or an
upgrade builds a new graph instead of loading a stale one. A graph is built in a temporary folder
and renamed into place whole: a killed export leaves only a ``.partial-*`` folder, never loaded.
Before that rename the graph and then a manifest with its size and SHA-256 reach the disk (the
files, then the folder entries), so a power cut leaves the old state or the whole new one. Every
load reads the graph once, checks those bytes against the manifest and hands exactly them to ONNX
Runtime: a truncated or altered graph (or one without a manifest) is moved aside and built again,
and nothing is read from a cache folder another user could write to (``private_dir``): the folders
are walked and checked by descriptor, and the manifest and graph read from the checked folder's.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from embed_server.private_dir import PrivateDir, open_private_dir
from embed_server.state_file import fsync_file, fsync_folder, set_aside, write_atomic

log = logging.getLogger(__name__)

# Bump when the steps below change: old graphs are then rebuilt, not reused.
RECIPE = "3"
GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"  # the graph's size and SHA-256, written after it
OPSET = 17
INT8_BLOCK = 128  # 32 measured closer still (0.9998 min) but slower; 128 kept every text above 0.999
_PARTIAL = ".partial-"
_STALE_PARTIAL_SECONDS = 3600  # an export takes seconds; an older partial folder is a killed one


class ExportError(RuntimeError):
    """The model could not be turned into an ONNX graph."""


class GraphCorrupt(RuntimeError):
    """A cached graph does not match its manifest (or has none)."""


def cache_key(folder: Path, quantize: str | None) -> str:
    """A digest of the model's files, the recipe and the versions of the libraries that build the graph."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    digest = hashlib.sha256()
    for name in (RECIPE, quantize or "fp32", torch.__version__, transformers.__version__, onnx.__version__,
                 onnxruntime.__version__):
        digest.update(name.encode() + b"\0")
    for path in sorted(folder.glob("*")):
        if path.is_file() and (path.suffix in (".json", ".safetensors", ".bin")):
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def graph_path(folder: Path, quantize: str | None, cache_dir: Path, name: str) -> Path:
    """Where the graph for this model and recipe lives (it may not exist yet)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir / "onnx" / f"{safe}-{quantize or 'fp32'}-{cache_key(folder, quantize)}" / GRAPH_FILE


def ensure_graph(folder: Path, quantize: str | None, cache_dir: Path, name: str) -> Path:
    """The cached graph, checked, built first if it is not there or is damaged."""
    return load_graph(folder, quantize, cache_dir, name)[0]


def load_graph(folder: Path, quantize: str | None, cache_dir: Path, name: str) -> tuple[Path, bytes]:
    """The cached graph's path and its bytes, checked against its manifest; built (again) when it is missing
    or damaged. Raises UnsafeDirectory, before reading anything, for a cache another user could write to."""
    target = graph_path(folder, quantize, cache_dir, name)
    # The cache folder and onnx/ are the graphs' own: a sticky bit is accepted only above them.
    with open_private_dir(cache_dir, create=True) as cache, cache.subdir("onnx", create=True) as graphs:
        for attempt in ("cached", "built"):
            built = _open_if_present(graphs, target.parent.name)
            if built is not None:
                try:
                    with built:
                        return target, _read_verified(built)
                except GraphCorrupt as error:
                    if attempt == "built":  # a fresh build that fails its own manifest: stop, do not loop
                        raise ExportError(f"the graph built for {name} does not match its manifest: "
                                          f"{error}") from error
                    set_aside(target.parent, str(error), what="cached ONNX graph", event="onnx_graph_corrupt",
                              then="building it again")
            _build_in_place(folder, quantize, target, graphs)
    raise AssertionError("unreachable")


def read_verified(target: Path) -> bytes:
    """The graph at ``target``, read as ``load_graph`` reads it (its folder checked from the root down)."""
    with open_private_dir(target.parent) as built:
        return _read_verified(built)


def _open_if_present(graphs: PrivateDir, name: str) -> PrivateDir | None:
    try:
        return graphs.subdir(name)
    except FileNotFoundError:
        return None


def _read_verified(built: PrivateDir) -> bytes:
    """The graph's bytes, once they match the manifest beside them. Both are read from descriptors opened in
    the checked folder, and the same bytes go to ONNX Runtime, so a file changed or swapped after the check
    is never what runs."""
    try:
        manifest = json.loads(built.read_file(MANIFEST_FILE))
        expected_size, expected_sum = int(manifest["bytes"]), str(manifest["sha256"])
    except FileNotFoundError:
        raise GraphCorrupt("it has no manifest (built by an older version, or cut off)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise GraphCorrupt(f"its manifest is unreadable ({type(error).__name__})") from None
    try:
        data = built.read_file(GRAPH_FILE)
    except FileNotFoundError:
        raise GraphCorrupt("the graph file is missing") from None
    if len(data) != expected_size:
        raise GraphCorrupt(f"the graph has {len(data)} bytes, its manifest says {expected_size}")
    found = hashlib.sha256(data).hexdigest()
    if found != expected_sum:
        raise GraphCorrupt(f"the graph's SHA-256 is {found[:16]}..., its manifest says {expected_sum[:16]}...")
    return data


def _build_in_place(folder: Path, quantize: str | None, target: Path, graphs: PrivateDir) -> None:
    """Build into a temporary folder of ``graphs`` (the checked onnx/ folder, whose path ``target`` is in)
    and rename it into place there."""
    parent = target.parent.parent
    _remove_stale_partials(parent)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=parent))
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every layer it skips
    try:
        _build(folder, quantize, work)
        _seal(work)
        try:
            # Atomic: the folder appears whole or not at all; in the checked folder, whatever its path does.
            os.rename(work.name, target.parent.name, src_dir_fd=graphs.fd, dst_dir_fd=graphs.fd)
        except OSError:
            if not target.is_file():  # not a concurrent build that finished first
                raise
        os.fsync(graphs.fd)  # the rename itself must reach the disk too
    except Exception as error:
        raise ExportError(f"cannot export {folder} to ONNX: {type(error).__name__}: {error}") from error
    finally:
        quiet.setLevel(level)
        shutil.rmtree(work, ignore_errors=True)
    log.info("onnx graph built", extra={"path": str(target), "quantize": quantize,
                                        "seconds": round(time.perf_counter() - started, 1)})


def _seal(work: Path) -> None:
    """Make the built graph durable, then record its size and SHA-256 beside it; the manifest comes last, so
    a manifest on disk vouches for a graph that is all there."""
    graph = work / GRAPH_FILE
    graph.chmod(0o644)  # whatever the umask: a graph others may write is refused when it is read
    fsync_file(graph)
    digest = hashlib.sha256()
    size = 0
    with graph.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    manifest = work / MANIFEST_FILE
    write_atomic(manifest, json.dumps({"graph": GRAPH_FILE, "bytes": size, "sha256": digest.hexdigest()}).encode())
    manifest.with_name(manifest.name + ".lock").unlink(missing_ok=True)  # write_atomic's lock: nobody else writes here
    fsync_folder(work)


def _remove_stale_partials(parent: Path) -> None:
    for partial in parent.glob(f"{_PARTIAL}*"):
        try:
            if time.time() - partial.stat().st_mtime > _STALE_PARTIAL_SECONDS:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _build(folder: Path, quantize: str | None, work: Path) -> None:
    import onnx
    from onnxruntime.transformers import optimizer

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level  # its import calls logging.basicConfig: undo that

    exported, fused = work / "exported.onnx", work / "fused.onnx"
    config = _export(folder, exported)
    # opt_level 1: only the portable fusions, so the file does not depend on this machine's CPU.
    model = optimizer.optimize_model(str(exported), model_type="bert", num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size, opt_level=1)
    log.info("onnx fusions", extra={"fused": {k: v for k, v in model.get_fused_operator_statistics().items() if v}})
    model.save_model_to_file(str(fused))
    if quantize == "int8":
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fused)), bits=8, block_size=INT8_BLOCK, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(work / GRAPH_FILE), use_external_data_format=False)
    else:
        fused.rename(work / GRAPH_FILE)
    onnx.checker.check_model(str(work / GRAPH_FILE))
    exported.unlink()
    fused.unlink(missing_ok=True)


def _export(folder: Path, path: Path):
    import torch
    from transformers import AutoModel

    # Eager attention: the exported pattern is the one the optimizer fuses into one Attention op.
    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    ids = torch.full((2, 16), 1000, dtype=torch.long)
    example = tuple(torch.ones_like(ids) if name == "attention_mask" else ids if name == "input_ids"
                    else torch.zeros_like(ids) for name in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.inference_mode():
        torch.onnx.export(LastHidden(), example, str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return model.config
