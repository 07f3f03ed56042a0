"""Errors that reach users as one line: ``file: key.path: what was expected, got what``.

The CLI prints ``str(error)`` and exits with status 2 (``--debug`` shows the traceback). Library code raises
these instead of bare ``ValueError`` wherever the message should name a recipe file or key.
"""

from __future__ import annotations

from typing import Any


class MaskkitError(Exception):
    """Base class of every error maskkit reports to a user."""


class ConfigError(MaskkitError):
    """A recipe value is wrong.

    ``key`` is the dotted path inside the recipe (``masker.ratio``); ``file`` the recipe file, if any.
    Components raise it with a key relative to themselves (``ConfigError("ratio", ...)``); the builder
    prefixes the component's section (``masker.``) and the file name before it reaches the user.
    """

    def __init__(self, key: str, message: str, *, file: str | None = None):
        self.key = key
        self.message = message
        self.file = file
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"

    def within(self, section: str | None = None, file: str | None = None) -> "ConfigError":
        """The same error with ``section.`` prefixed to the key and the file set (if not set yet)."""
        key = self.key
        if section:
            key = f"{section}.{key}" if key else section
        return ConfigError(key, self.message, file=self.file or file)


class UnknownComponentError(ConfigError):
    """A registry name that no loaded plugin provides."""


class PluginError(MaskkitError):
    """A plugin misbehaves: a name clash, a hook returning the wrong type, a misspelled hook."""


class CheckpointError(MaskkitError):
    """A checkpoint file is missing, corrupt, or not one of ours."""


class TrainingError(MaskkitError):
    """The run cannot go on (a non-finite loss, for instance)."""


def expected(what: str, got: Any) -> str:
    """The standard phrase ``expected WHAT, got VALUE``."""
    return f"expected {what}, got {got!r}"


class NoPixelFormError(MaskkitError, ValueError):
    """A reconstruction picture was asked of a model whose target has no pixel form (HOG, features)."""
