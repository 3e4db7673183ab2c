"""Driver exceptions, one per gRPC status code of the errors table (docs/errors.md).

Every step raises these; only ``server.py`` turns them into gRPC statuses, so no
module below the gRPC layer imports grpc: codes are ``grpc.StatusCode`` member names
(the FUSE view process shares these modules and, without grpc, is ~15 MB smaller).
Messages land in pod events: they name the reference, digest or layer, and say what
to do. They never carry a secret.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class: a failure with a gRPC code and a message a human can act on."""

    code = "INTERNAL"  # a grpc.StatusCode member name

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DriverError):
    code = "INVALID_ARGUMENT"


class NotFound(DriverError):
    code = "NOT_FOUND"


class AlreadyExists(DriverError):
    code = "ALREADY_EXISTS"


class PermissionDenied(DriverError):
    code = "PERMISSION_DENIED"


class CredentialsRefused(PermissionDenied):
    """The registry refused the credentials (or wanted some): another credential source may do."""


class Unavailable(DriverError):
    code = "UNAVAILABLE"


class FailedPrecondition(DriverError):
    code = "FAILED_PRECONDITION"


class DataLoss(DriverError):
    code = "DATA_LOSS"


class ResourceExhausted(DriverError):
    code = "RESOURCE_EXHAUSTED"


class Aborted(DriverError):
    code = "ABORTED"


class Internal(DriverError):
    code = "INTERNAL"
