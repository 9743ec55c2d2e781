"""Exceptions raised by slade.

Every error slade raises on bad input is a :class:`SladeError`, and also an instance of the
built-in exception that fits (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...),
so ``except ValueError`` keeps working in code written for PyTorch.
"""


class SladeError(Exception):
    """Base class of every slade error."""


class ShapeError(SladeError, ValueError):
    """A tensor has the wrong number of dimensions, or lengths that do not match."""


class DtypeError(SladeError, TypeError):
    """A tensor or argument has a type the operation does not accept."""


class DeviceError(SladeError, ValueError):
    """Tensors that must share a device do not."""


class NonFiniteError(SladeError, ValueError):
    """NaN or Inf where finite values are required."""


class InvalidArgumentError(SladeError, ValueError):
    """An argument is outside its valid range (k, thresholds, empty input, ...)."""


class ConfigError(InvalidArgumentError):
    """A setting is invalid: an unknown configuration key, preset or option name, or a
    value outside the setting's range. Every bad setting is also an invalid argument."""


class NotSupportedError(SladeError, NotImplementedError):
    """A pytorch-metric-learning argument or feature that slade does not implement (a
    non-default distance or reducer, ``ref_emb``, ...); the message names it."""


class MissingFileError(SladeError, FileNotFoundError):
    """A file or folder slade needs does not exist."""


class SladeIOError(SladeError, OSError):
    """Reading or writing a file failed (corrupt or unreadable data)."""


class TorchError(SladeError, RuntimeError):
    """LibTorch reported an error slade did not anticipate."""


class InternalError(SladeError, RuntimeError):
    """A bug in slade; please report it with the message."""


class DistributedError(SladeError, RuntimeError):
    """In a process group, another rank did not take part in a collective in time (it died,
    hangs, or took another branch): the job cannot go on."""


class SladeWarning(UserWarning):
    """Something a run left out and reports: unreadable image files dropped at load time
    (``data.skip_bad_files``), training steps skipped for NaN or Inf
    (``optimizer.nonfinite="skip"``)."""


__all__ = [
    "SladeWarning",
    "SladeError",
    "ShapeError",
    "DtypeError",
    "DeviceError",
    "NonFiniteError",
    "InvalidArgumentError",
    "ConfigError",
    "NotSupportedError",
    "MissingFileError",
    "SladeIOError",
    "TorchError",
    "InternalError",
    "DistributedError",
]
