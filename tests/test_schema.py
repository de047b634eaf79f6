"""Schemathesis against the server's own OpenAPI schema: no 5xx, no response off the schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(server: str, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    report = ARTIFACTS / "schemathesis.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    # A request over the body limit is answered 413 before it is parsed: a rejection like the others.
    config = tmp_path / "schemathesis.toml"
    config.write_text("[checks.negative_data_rejection]\n"
                      "expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]\n")
    result = subprocess.run(
        [binary, "--config-file", str(config), "run", f"{server}/openapi.json", "--checks", "all", "--max-examples", "60",
         # Valid token ids depend on the vocabulary, which a JSON schema cannot express; every
         # other check runs, and any rejection must still be a documented, schema-valid error.
         "--exclude-checks", "positive_data_acceptance",
         # /v1/search needs Chroma and Open WebUI, which this server has not got: tests/test_bridge.py
         # drives it against the real ones.
         "--exclude-path", "/v1/search",
         "--phases", "examples,coverage,fuzzing", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=900,
    )
    report.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
