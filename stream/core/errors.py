"""Every error interest-stream raises on purpose, under one root.

Catch :class:`InterestStreamError` to catch them all; each also subclasses the builtin it
used to be (``ValueError`` or ``RuntimeError``), so ``except ValueError`` keeps working.

=========================  ==========================================================
error                      raised when
=========================  ==========================================================
``SettingsError``          a setting has a value that cannot be used (names it)
``StateFormatError``       stored user-state bytes are newer or corrupt
``TrendFormatError``       stored trend bytes are newer or corrupt
``ScorerError``            the model (in-process or TF Serving) failed; users stay dirty
``DeliveryFailed``         a changelog or output record was not delivered: **fatal**,
                           the worker stops (its effects would otherwise be lost)
``StorageFailed``          the local RocksDB store could not be read or written (a full
                           disk, a broken file): **fatal**, the worker stops
``BrokerError``            the local Kafka broker cannot start, stop or be reached
``ProduceError``           an event file cannot be replayed into Kafka
``DataFormatError``        an event file is not in a format we read (or holds no event)
``Unreachable``            a service a command needs does not answer (a worker, the broker)
``LeakError``              an evaluated method looked past the event it is judged on
=========================  ==========================================================

Fatal errors (:class:`FatalError`) are not about one record: the worker logs one line and
stops instead of retrying forever.
"""

from __future__ import annotations


class InterestStreamError(Exception):
    """The root of every error this project raises on purpose."""


class FatalError(InterestStreamError):
    """Not about one record or one call: the process cannot go on correctly."""


class SettingsError(InterestStreamError, ValueError):
    """A setting has a value that cannot be used; the message names it and is for the user."""


class StateFormatError(InterestStreamError, ValueError):
    """Stored bytes are not a user state this worker can read (newer format, or corrupt)."""


class TrendFormatError(InterestStreamError, ValueError):
    """Stored bytes are not a trend this worker can read (newer format, or corrupt)."""


class ScorerError(InterestStreamError, RuntimeError):
    """Scoring failed; the message says where and why (the stream retries with backoff)."""


class DeliveryFailed(FatalError, RuntimeError):
    """A changelog or output record could not be delivered: the worker must stop."""


class StorageFailed(FatalError, RuntimeError):
    """The local store refused a read or a write: no record is to blame, so none is
    dead-lettered for it; the worker stops and resumes from the changelogs."""


class BrokerError(InterestStreamError, RuntimeError):
    """The local broker cannot be started, stopped or reached; the message says why."""


class ProduceError(InterestStreamError, RuntimeError):
    """An event replay cannot start or finish; the message says why."""


class DataFormatError(InterestStreamError, ValueError):
    """An event file is not in a format we can read; the message names file and line."""


class Unreachable(InterestStreamError, RuntimeError):
    """A service a command needs does not answer; the message names it and what to check."""


class LeakError(InterestStreamError):
    """A method returned an item it could only know by looking past the target."""
