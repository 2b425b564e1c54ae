"""Storage failures, as the rest of the gateway sees them."""


class StorageError(Exception):
    """A write or read did not complete; nothing of it was committed.

    Intake answers 451 on this; the scheduler leaves claims to expire and retries.
    """
