"""One exception hierarchy. The CLI turns each into a one-line message (see ``adaptreg.cli``)."""

from __future__ import annotations


class AdaptregError(Exception):
    """Base class of every error adaptreg raises on purpose.

    The message is one line that names the problem and, where possible, the fix.
    """

    exit_code = 2


class DataError(AdaptregError):
    """Task data is missing, malformed or unusable (bad column, one class, empty text...)."""


class ConfigError(AdaptregError):
    """An option has a value outside its allowed range or combination."""


class BaseModelError(AdaptregError):
    """The base model cannot be resolved or loaded."""


class IncompatibleBaseError(AdaptregError):
    """An adapter was built on a base with another fingerprint than the one given."""


class IntegrityError(AdaptregError):
    """A stored file does not match its recorded checksum (tampered or truncated)."""


class RegistryError(AdaptregError):
    """The registry cannot find, create or change an entry."""


class NotFoundError(RegistryError):
    """A task, version or alias does not exist in the registry."""


class CatalogError(AdaptregError):
    """A catalog dataset cannot be fetched, verified or read."""


class MergeError(AdaptregError):
    """Adapters cannot be merged (rank, rsLoRA, DoRA or target mismatch)."""


class NotFittedError(AdaptregError):
    """A router or probe was used before ``fit``."""
