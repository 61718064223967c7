"""Deterministic client-side ids: re-running a step re-sends the same ids."""

from __future__ import annotations

import uuid
from typing import Final

#: Namespace of every UUIDv5 society-ingest derives (fixed forever).
NAMESPACE: Final = uuid.UUID("6f1c2a52-3d0b-5b7e-9a43-5d1f0c2b7e11")


def memory_id(run_id: uuid.UUID | str, agent_id: str, step: int, seq: int) -> uuid.UUID:
    """Id of the `seq`-th memory `agent_id` recorded at `step` of `run_id`."""
    return uuid.uuid5(NAMESPACE, f"memory/{run_id}/{agent_id}/{step}/{seq}")


def event_uid(run_id: uuid.UUID | str, step: int, subject: str, seq: int) -> uuid.UUID:
    """Id of the `seq`-th event about `subject` at `step` of `run_id`."""
    return uuid.uuid5(NAMESPACE, f"event/{run_id}/{subject}/{step}/{seq}")
