"""Doctor's rules on given facts (the services are exercised in test_bridge.py): what migrate leaves
behind is reported as such, not as a wrong model or an orphan."""

from __future__ import annotations

from vector_bridge.doctor import Expected, Facts, diagnose
from vector_bridge.store import CollectionInfo

URL = "http://127.0.0.1:8080/v1"
HYBRID = "all-MiniLM-L6-v2-hybrid"


def findings_by_collection(*collections: CollectionInfo) -> dict[str | None, list[tuple[str, str]]]:
    facts = Facts(list(collections), Expected("open-webui", "openai", HYBRID, URL, dimension=4480), URL,
                  referenced={"kb-1"})
    found: dict[str | None, list[tuple[str, str]]] = {}
    for finding in diagnose(facts):
        found.setdefault(finding.collection, []).append((finding.severity, finding.message))
    return found


def test_migrated_collection_its_kept_old_vectors_and_an_unfinished_shadow() -> None:
    found = findings_by_collection(
        CollectionInfo("kb-1", 10, 4480, {HYBRID: 10}),
        CollectionInfo(f"kb-1.pre.{HYBRID}", 10, 384, {"all-MiniLM-L6-v2": 10}),
        CollectionInfo("kb-2", 5, 384, {"all-MiniLM-L6-v2": 5}),
        CollectionInfo(f"kb-2.to.{HYBRID}", 3, 4480, {HYBRID: 3}),
    )
    assert "kb-1" not in found
    [(severity, message)] = found[f"kb-1.pre.{HYBRID}"]
    assert severity == "info" and "old vectors of kb-1" in message
    [(severity, message)] = found[f"kb-2.to.{HYBRID}"]
    assert severity == "warning" and "has not finished" in message
    # kb-2 itself is still on MiniLM and unknown to Open WebUI: wrong model, wrong size, orphan.
    assert sorted(severity for severity, _ in found["kb-2"]) == ["error", "error", "warning"]
    assert None not in found  # no stack-wide problem
