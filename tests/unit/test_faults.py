"""vSphere faults on the wire: to_status and back with from_rpc_error."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2

from vsim import faults
from vsim.faults import STATUS_DETAILS_KEY, VimFault, fault_from_proto, from_rpc_error
from vsim.v1 import common_pb2


class FakeRpcError(grpc.RpcError):
    """What a grpc.aio call raises, reduced to what from_rpc_error reads."""

    def __init__(self, code, details="", trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def over_the_wire(fault: VimFault) -> FakeRpcError:
    status = fault.to_status()
    return FakeRpcError(
        fault.code,
        fault.message,
        [("other-key", b"x"), (STATUS_DETAILS_KEY, status.SerializeToString())],
    )


ALL_FAULTS = sorted(faults._BY_NAME.values(), key=lambda cls: cls.name)


@pytest.mark.parametrize("cls", ALL_FAULTS, ids=[cls.name for cls in ALL_FAULTS])
def test_every_fault_survives_the_round_trip(cls: type[VimFault]):
    sent = cls("something went wrong: do this", thumbprint="AB:CD", count=3)
    received = from_rpc_error(over_the_wire(sent))
    assert type(received) is cls
    assert received.name == sent.name == cls.name
    assert received.message == "something went wrong: do this"
    assert received.properties == {"thumbprint": "AB:CD", "count": "3"}


def test_to_status_carries_the_grpc_code_and_fault():
    fault = faults.SSLVerifyFault("verify it", thumbprint="AA:BB")
    status = fault.to_status()
    assert status.code == code_pb2.FAILED_PRECONDITION
    assert status.message == "SSLVerifyFault: verify it"
    unpacked = common_pb2.Fault()
    assert status.details[0].Unpack(unpacked)
    assert unpacked.name == "SSLVerifyFault"
    assert dict(unpacked.properties) == {"thumbprint": "AA:BB"}


@pytest.mark.parametrize(
    "cls, code",
    [
        (faults.InvalidArgument, code_pb2.INVALID_ARGUMENT),
        (faults.NotFound, code_pb2.NOT_FOUND),
        (faults.DuplicateName, code_pb2.ALREADY_EXISTS),
        (faults.NotAuthenticated, code_pb2.UNAUTHENTICATED),
        (faults.InvalidLogin, code_pb2.UNAUTHENTICATED),
        (faults.NoPermission, code_pb2.PERMISSION_DENIED),
        (faults.InsufficientResourcesFault, code_pb2.RESOURCE_EXHAUSTED),
        (faults.HostNotConnected, code_pb2.UNAVAILABLE),
        (faults.SystemError_, code_pb2.INTERNAL),
    ],
)
def test_fault_status_codes(cls: type[VimFault], code: int):
    assert cls("x").to_status().code == code


def test_system_error_is_named_system_error():
    assert faults.SystemError_("x").name == "SystemError"
    assert str(faults.NotFound("no VM")) == "NotFound: no VM"


def test_unknown_fault_name_is_kept():
    fault = fault_from_proto(common_pb2.Fault(name="SomeFutureFault", message="x", properties={}))
    assert isinstance(fault, VimFault)
    assert (fault.name, fault.message) == ("SomeFutureFault", "x")
    assert fault.code == grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize(
    "code, expected",
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "RequestTimeout"),
        (grpc.StatusCode.UNAVAILABLE, "HostConnectFault"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "InvalidArgument"),
        (grpc.StatusCode.INTERNAL, "SystemError"),
        (grpc.StatusCode.UNIMPLEMENTED, "SystemError"),
    ],
)
def test_transport_errors_without_a_fault_map_to_faults(code, expected: str):
    fault = from_rpc_error(FakeRpcError(code, "connection reset"))
    assert fault.name == expected
    assert "connection reset" in fault.message


def test_error_without_trailing_metadata_is_a_system_error():
    class Bare(grpc.RpcError):
        pass

    assert from_rpc_error(Bare("boom")).name == "SystemError"
