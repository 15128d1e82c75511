"""How the dashboard refuses a request; ``app.py`` turns these into a page or a redirect."""
from __future__ import annotations

from detector.errors import ClearanceError


class Refused(ClearanceError):
    """A dashboard request refused with an HTTP ``status`` and a message for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SignInRequired(ClearanceError):
    """No live session: the browser is sent to the sign-in page."""
