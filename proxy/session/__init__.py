"""A client session, one concern per module (see ``client.py`` for the walk through them)."""

from .client import ClientSession
from .context import SessionContext, SessionHost

__all__ = ["ClientSession", "SessionContext", "SessionHost"]
