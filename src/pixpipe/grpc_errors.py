"""Maps pixpipe's error types to gRPC statuses with google.rpc details, in one place."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pixpipe.errors import CsvFault, CsvValidationError, InvalidOptionError

# A CSV fault travels as a FieldViolation whose field is "<line>:<column>:<column name>".
FAULT_FIELD_SEPARATOR = ":"


def fault_to_violation(fault: CsvFault) -> error_details_pb2.BadRequest.FieldViolation:
    return error_details_pb2.BadRequest.FieldViolation(
        field=FAULT_FIELD_SEPARATOR.join((str(fault.line), str(fault.column), fault.field)),
        description=fault.reason,
    )


def violation_to_fault(violation: error_details_pb2.BadRequest.FieldViolation) -> CsvFault:
    parts = violation.field.split(FAULT_FIELD_SEPARATOR, 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return CsvFault(line=int(parts[0]), column=int(parts[1]), field=parts[2],
                        reason=violation.description)
    return CsvFault(line=0, column=0, field=violation.field, reason=violation.description)


def bad_request_status(message: str,
                       violations: list[error_details_pb2.BadRequest.FieldViolation],
                       ) -> grpc.Status:
    detail = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message)
    detail.details.add().Pack(error_details_pb2.BadRequest(field_violations=violations))
    return rpc_status.to_status(detail)


# Error details travel base64-encoded in a trailer, and gRPC clients refuse response metadata
# past their soft limit of 8 KB some of the time and past 16 KB always (the call then fails
# RESOURCE_EXHAUSTED, not INVALID_ARGUMENT): the faults listed stop at this many bytes, which
# stay under 8 KB once encoded with the message, and one more violation counts the rest.
MAX_VIOLATION_BYTES = 4 * 1024


def status_for_csv_error(error: CsvValidationError) -> grpc.Status:
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    room = MAX_VIOLATION_BYTES
    for fault in error.faults:
        violation = fault_to_violation(fault)
        room -= violation.ByteSize() + 4  # the field's tag and length
        if room < 0:
            left = len(error.faults) - len(violations)
            violations.append(fault_to_violation(CsvFault(
                line=0, column=0, field="",
                reason=f"{left} more faults not listed here; fix these and upload again")))
            break
        violations.append(violation)
    return bad_request_status(f"CSV refused: {error}", violations)


def status_for_option_error(error: InvalidOptionError) -> grpc.Status:
    return bad_request_status(
        str(error),
        [error_details_pb2.BadRequest.FieldViolation(field=error.field,
                                                     description=error.reason)])


async def abort_with_status(context: grpc.aio.ServicerContext[Any, Any],
                            status: grpc.Status) -> NoReturn:
    # grpc-stubs lags grpcio: abort_with_status exists on the aio context since grpcio 1.38.
    await context.abort_with_status(status)  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def bad_request_details(error: grpc.aio.AioRpcError | grpc.RpcError,
                        ) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The field violations carried by a client-side INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return violations
