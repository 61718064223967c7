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


@pytest.mark.parametrize("url", [
    "postgresql://postgres:S3CRETpw@[::1:bad/x",
    "postgresql://u:S3CRETb%ZZ@127.0.0.1:1/x",
    "mysql://u:S3CRETpw@h/x",
])
def test_an_unparseable_url_is_reported_without_its_password(url):
    from producers import ReadUnavailableError

    with pytest.raises(ReadUnavailableError) as caught:
        MemoryReader(url).recent_memories("agent_0", 1, run_id=None)
    text = f"{caught.value} {caught.value.__cause__} {caught.value.__context__}"
    assert "invalid connection URL" in str(caught.value) and "S3CRET" not in text


@pytest.mark.parametrize(("url", "normal"), [
    ("postgresql+asyncpg://u:p@h:1/d", "postgresql://u:p@h:1/d"),
    ("postgresql+psycopg://u@h/d", "postgresql://u@h/d"),
    ("postgresql+psycopg2://h/d", "postgresql://h/d"),
    ("postgres://h/d", "postgresql://h/d"),
    ("postgresql://h/d", "postgresql://h/d"),
    ("mysql://h/d", "mysql://h/d"),
])
def test_sqlalchemy_style_schemes_are_normalised(url, normal):
    from producers._pg_pool import normalise_url

    assert normalise_url(url) == normal
    if normal.startswith("postgresql://"):  # a SQLAlchemy-style db_url is a database to read from
        assert resolve_read_url(None, url, None) == url


def test_scrub_masks_the_password_as_written_and_decoded():
    from producers._pg_pool import scrub

    assert "S3CRET" not in scrub("bad: u:S3CRET%21x and S3CRET!x", "postgresql://u:S3CRET%21x@h/d")


@pytest.mark.parametrize(("args", "message"), [
    ({"run_id": "not-a-uuid"}, "run_id must be a UUID"),
    ({"current_step": 2**31}, "current_step must fit"),
    ({"agent_id": object()}, "agent_id must be text"),
    ({"k": True}, "k must be an int"),
])
def test_bad_reader_arguments_name_the_argument(args, message):
    reader = MemoryReader("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match=message):
        reader.retrieve_memories(**{"agent_id": "agent_0", "query": "bread", "k": 5, "run_id": None, **args})


@pytest.mark.parametrize("timeout", [float("nan"), None, "3", True, -1])
def test_the_reader_wait_rejects_a_bad_timeout(timeout):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        MemoryReader("postgresql://nobody@127.0.0.1:1/none").wait_until_landed({("t", 0): 1}, timeout)
