"""The error types onnxrec raises for problems a user can fix.

Every error a user can cause derives from :class:`OnnxrecError`. Its message is one line that names
the problem; the CLI prints it as ``error: <message>`` and exits with status 2, without a traceback
(``--debug`` shows one). The one exception is the gRPC client's
:class:`onnxrec.clients.RecommenderError` (a failed call, carrying its status code): it derives from
:class:`Exception` because the client-only distribution ``onnxrec-client`` ships without this module.
"""

from __future__ import annotations


class OnnxrecError(Exception):
    """Base class of every user-facing onnxrec error (one-line message)."""


class ConfigError(OnnxrecError):
    """A configuration file, environment variable or option is wrong."""


class DataError(OnnxrecError):
    """An interaction log, dataset artifact or split is missing, malformed or unusable."""


class FetchError(DataError):
    """A dataset download failed or did not match its checksum."""


class TrainingError(OnnxrecError):
    """Training could not go on (e.g. the loss became NaN) or a run directory is unusable."""


class ExportError(OnnxrecError):
    """Export to ONNX failed."""


class ParityError(ExportError):
    """The exported graph does not compute what the PyTorch model computes."""


class RecallError(ExportError):
    """The nearest-neighbour index finds too few of the exact top-k items (below ``--min-recall``)."""
