"""Exception types of the provider.

Plain Python, no Airflow import: the domain modules raise these and the operators translate
them into Airflow's task outcomes (fail now, retry, skip).
"""

from __future__ import annotations


class PacificaError(Exception):
    """Base class of every error raised by this provider."""


class InvalidInputError(PacificaError, ValueError):
    """A CloudEvent, file list or connection setting that cannot be used as given."""


class CloudEventError(InvalidInputError):
    """The event (or file list) cannot be downloaded; the message names the offending record."""


class ServiceError(PacificaError):
    """A Pacifica service answered in a way the client cannot continue from.

    :param message: what went wrong, including the service's own message where it gave one.
    :param status_code: the HTTP status code, when there was a response.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class CartdError(ServiceError):
    """Cartd answered in a way the client cannot continue from."""


class MetadataError(ServiceError):
    """pacifica-metadata answered in a way the client cannot continue from."""


class MetadataTransientError(MetadataError):
    """A fault that may pass: connection refused or reset, timeout, 429, any 5xx."""


class TransactionNotFoundError(MetadataError):
    """Metadata has no transaction with that id (404)."""


class CartdTransientError(CartdError):
    """A fault that may pass: connection refused or reset, timeout, 429, 502, 503, 504."""


class CartNotFoundError(CartdError):
    """Cartd does not know the cart (never created, deleted, or purged by its LRU)."""


class CartNotReadyError(CartdError):
    """A download was asked for a cart that is still staging (Cartd answered 202)."""


class CartFailedError(CartdError):
    """Cartd reports the cart in error.

    :param message: Cartd's message, and the failing files when they could be named.
    :param transient: the message names a fault of the archive or of Cartd's disk that may pass
        (a later attempt stages the cart again); otherwise no retry can help.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class CartLostError(CartdError):
    """A cart vanished (purged by Cartd's LRU, or deleted) again after it had been staged once more."""


class CartWaitTimeoutError(CartdError):
    """A cart was still not ready when the wait's time ran out."""


class DownloadCancelledError(PacificaError):
    """The download was stopped from outside (the task was killed); nothing was published."""


class ExtractionError(PacificaError):
    """The cart's tar stream could not be turned into the requested, verified files."""


class UnsafeMemberError(ExtractionError):
    """A tar member is a link, a device, absolute, escapes the cart, or was not requested."""


class VerificationError(ExtractionError):
    """A file arrived with the wrong size or hash, or a requested file never arrived."""


class StreamError(ExtractionError):
    """The tar stream ended early or could not be read; the download may be retried."""


class DestinationWriteError(ExtractionError):
    """A file could not be written whole into the staging directory (the disk is full, a quota...).

    Nothing was published; the staging directory is removed. A retry may succeed once there is room.
    """


class BackgroundWriteError(DestinationWriteError):
    """A write that failed in an upload thread and surfaced at a later call.

    Its message names the object that failed, which is not the file being handed over when it
    is raised.
    """


class RollbackError(ExtractionError):
    """Publishing failed midway and some moves could not be undone.

    Nothing is deleted then: the files it replaced stay in ``kept``, for a person to put back.

    :param message: what failed, and where the replaced files are kept.
    :param kept: the directory holding the staging tree and the replaced originals.
    """

    def __init__(self, message: str, kept: str) -> None:
        super().__init__(message)
        self.kept = kept
