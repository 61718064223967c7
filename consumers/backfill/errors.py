"""What makes a backfill stop: one root, BackfillError, and what the caller does next."""

from __future__ import annotations

from consumers.errors import ConsumerError


class BackfillError(ConsumerError):
    """The backfill cannot go on; what was delivered is in the checkpoint, and the same command resumes."""


class CheckpointMismatchError(BackfillError):
    """The checkpoint belongs to other inputs, or the lines it counts as done have changed."""


class CheckpointInUseError(BackfillError):
    """Another backfill holds the checkpoint's lock: wait for it, or use another checkpoint."""


class BackfillDeliveryError(BackfillError):
    """Kafka did not acknowledge a batch: the checkpoint stays before it."""


__all__ = ["BackfillDeliveryError", "BackfillError", "CheckpointInUseError", "CheckpointMismatchError"]
