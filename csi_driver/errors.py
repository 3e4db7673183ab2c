"""Driver exceptions, one per gRPC status code of DESIGN.md's error table.

Every step raises these; only ``server.py`` turns them into gRPC statuses, so no
module below the gRPC layer imports grpc. Messages land in pod events: they name
the reference, digest or layer, and say what to do. They never carry a secret.
"""

from __future__ import annotations

import grpc


class DriverError(Exception):
    """Base class: a failure with a gRPC code and a message a human can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DriverError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DriverError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DriverError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DriverError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DriverError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(DriverError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(DriverError):
    code = grpc.StatusCode.DATA_LOSS


class ResourceExhausted(DriverError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(DriverError):
    code = grpc.StatusCode.ABORTED


class Internal(DriverError):
    code = grpc.StatusCode.INTERNAL
