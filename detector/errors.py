"""The one error root of Clearance. Edges (CLI, HTTP) translate these; nothing else does."""


class ClearanceError(Exception):
    """Base of every error Clearance raises on purpose."""


class AudioError(ClearanceError):
    """Audio that cannot be used: unreadable, empty, too long or too large.

    ``source`` names the input (a path or an upload name); ``reason`` says what is wrong in
    words a person can act on. ``too_large`` marks inputs refused by a size or duration cap.
    """

    def __init__(self, source: str, reason: str, *, too_large: bool = False):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.too_large = too_large


class StorageError(ClearanceError):
    """A catalog file or folder this process cannot use as asked: a home or database it may not
    write, a database that is missing, or one whose schema it may not upgrade.

    ``path`` names the file, folder or database; ``reason`` says why, in words a person can act on.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ModelError(ClearanceError):
    """A model checkpoint that is missing, unreadable or from an unknown version."""


class PolicyError(ClearanceError):
    """A policy file that is missing, malformed or inconsistent."""


class NotFound(ClearanceError):
    """No such thing as was named: a track, a check, an API key (or none the caller may see)."""


class InvalidRequest(ClearanceError):
    """A value that passed type validation but makes no sense: a forged cursor, a work id of the
    wrong length."""


class Conflict(ClearanceError):
    """The request clashes with what is stored: an id or a recording already in the catalog, a
    verdict recorded against a view someone else has changed meanwhile, a catalog that another
    indexing job holds (its writer lock) until it finishes."""


class Busy(ClearanceError):
    """Every slot of a bounded work pool is taken: the same request may succeed later, after
    ``retry_after_s`` seconds (None: unknown)."""

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ClearanceError):
    """A part of the catalog that the request needs answers nowhere now (every replica of a shard
    is gone): no decision is made without it; the same request may succeed once it is back."""
