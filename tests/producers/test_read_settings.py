"""Where the drop-in handler reads memories from, and the reader's argument checks (no services needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from producers.handler import resolve_read_url
from producers.reads import DEFAULT_LOADER_GROUP, MemoryReader, RetrievalWeights


def test_read_url_first_match_wins(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("SOCIETY_READ_DATABASE_URL", "postgresql://read-env/db")
    config = SimpleNamespace(output=SimpleNamespace(database_url="postgresql://config/db"))
    assert resolve_read_url("postgresql://explicit/db", "postgresql://arg/db", config) == "postgresql://explicit/db"
    assert resolve_read_url(None, "postgresql://arg/db", config) == "postgresql://arg/db"
    assert resolve_read_url(None, "kafka://127.0.0.1:19092/x", config) == "postgresql://config/db"
    assert resolve_read_url(None, "kafka://127.0.0.1:19092/x", {"output": {"database_url": "postgres://c/d"}}) == (
        "postgres://c/d")
    assert resolve_read_url(None, "kafka://127.0.0.1:19092/x", None) == "postgresql://read-env/db"
    monkeypatch.delenv("SOCIETY_READ_DATABASE_URL")
    assert resolve_read_url(None, None, None) == "postgresql://env/db"
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_read_url(None, "sqlite:///./x.db", None) is None


def test_the_default_loader_group_is_the_workers():
    from consumers.settings import DEFAULT_GROUP

    assert DEFAULT_LOADER_GROUP == DEFAULT_GROUP


@pytest.mark.parametrize("weights", [{"recency": -1}, {"importance": float("nan")}, {"relevance": True}])
def test_weights_are_finite_and_not_negative(weights):
    with pytest.raises(ValueError, match="RetrievalWeights"):
        RetrievalWeights(**weights)


@pytest.mark.parametrize(("args", "message"), [
    ({"k": 1.5}, "k must be an int"),
    ({"window": 0}, "window must be at least 1"),
    ({"decay": 0}, r"decay must be in \(0, 1\]"),
    ({"decay": 1.5}, r"decay must be in \(0, 1\]"),
    ({"weights": {"recency": 1}}, "weights must be a RetrievalWeights"),
])
def test_retrieval_arguments_are_checked_before_any_connection(args, message):
    reader = MemoryReader("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match=message):
        reader.retrieve_memories("agent_0", "bread", **{"k": 5, "run_id": None, **args})
