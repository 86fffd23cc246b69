"""One root exception for the project, so callers can tell our failures from bugs."""

from __future__ import annotations


class EmbedderError(Exception):
    """Root of every error the embedder raises on purpose."""


class BadArguments(EmbedderError):
    """The caller asked for something invalid; nothing was done (CLI exit code 2)."""


class UnknownModel(BadArguments):
    """A model_id outside the registry of SPEC section 3."""


class ServiceUnavailable(EmbedderError):
    """A database or broker could not be reached; the message never carries secrets."""
