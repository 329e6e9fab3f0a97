"""vSphere faults: the only way an operation fails in vsim.

Every fault has the vSphere fault name, a message a person can act on, the gRPC
status code it travels with, and fault-specific properties (SSLVerifyFault carries
the thumbprint). `to_status`/`from_rpc_error` put a fault on the wire as a
google.rpc.Status with a packed `vsim.v1.Fault`, and take it back off.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2

from vsim.v1 import common_pb2


class VimFault(Exception):
    """A vSphere fault. Subclasses fix the name and gRPC code."""

    name = "VimFault"
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, **properties: str) -> None:
        super().__init__(message)
        self.message = message
        self.properties = {k: str(v) for k, v in properties.items()}

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"

    def to_proto(self) -> common_pb2.Fault:
        return common_pb2.Fault(name=self.name, message=self.message, properties=self.properties)

    def to_status(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(self.to_proto())
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=str(self), details=[detail]
        )


def _fault(name: str, code: grpc.StatusCode) -> type[VimFault]:
    return type(name, (VimFault,), {"name": name, "code": code})


S = grpc.StatusCode
InvalidArgument = _fault("InvalidArgument", S.INVALID_ARGUMENT)
InvalidRequest = _fault("InvalidRequest", S.INVALID_ARGUMENT)
NotFound = _fault("NotFound", S.NOT_FOUND)
DuplicateName = _fault("DuplicateName", S.ALREADY_EXISTS)
AlreadyExists = _fault("AlreadyExists", S.ALREADY_EXISTS)
NotAuthenticated = _fault("NotAuthenticated", S.UNAUTHENTICATED)
InvalidLogin = _fault("InvalidLogin", S.UNAUTHENTICATED)
NoPermission = _fault("NoPermission", S.PERMISSION_DENIED)
InvalidState = _fault("InvalidState", S.FAILED_PRECONDITION)
InvalidPowerState = _fault("InvalidPowerState", S.FAILED_PRECONDITION)
InsufficientResourcesFault = _fault("InsufficientResourcesFault", S.RESOURCE_EXHAUSTED)
TaskInProgress = _fault("TaskInProgress", S.FAILED_PRECONDITION)
ResourceInUse = _fault("ResourceInUse", S.FAILED_PRECONDITION)
SSLVerifyFault = _fault("SSLVerifyFault", S.FAILED_PRECONDITION)
HostConnectFault = _fault("HostConnectFault", S.UNAVAILABLE)
HostNotConnected = _fault("HostNotConnected", S.UNAVAILABLE)
RequestTimeout = _fault("RequestTimeout", S.DEADLINE_EXCEEDED)
FileLocked = _fault("FileLocked", S.FAILED_PRECONDITION)
CannotAccessFile = _fault("CannotAccessFile", S.UNAVAILABLE)


class StoragePathLost(CannotAccessFile):
    """A storage command or its reply lost on the way to or from the array (a cut or
    reset path): on the wire the CannotAccessFile it is; to the host that sent it, a
    command it may send again if it is idempotent."""


CannotCreateFile = _fault("CannotCreateFile", S.PERMISSION_DENIED)
FileNotFound = _fault("FileNotFound", S.NOT_FOUND)
FileAlreadyExists = _fault("FileAlreadyExists", S.ALREADY_EXISTS)
FileTooLarge = _fault("FileTooLarge", S.OUT_OF_RANGE)
NoDiskSpace = _fault("NoDiskSpace", S.RESOURCE_EXHAUSTED)
MigrationFault = _fault("MigrationFault", S.FAILED_PRECONDITION)
"""A vMotion that cannot be done or did not complete (the VM stays on its source)."""
NotEnoughCpus = _fault("NotEnoughCpus", S.FAILED_PRECONDITION)
"""The host has fewer physical cores than the VM has virtual CPUs."""
DisallowedMigrationDeviceAttached = _fault(
    "DisallowedMigrationDeviceAttached", S.FAILED_PRECONDITION
)
"""A device the VM has (DirectPath I/O) cannot move with it."""
VMotionNotConfigured = _fault("VMotionNotConfigured", S.FAILED_PRECONDITION)
"""A host of the migration has no vMotion network to send or receive it on."""
InvalidDatastore = _fault("InvalidDatastore", S.FAILED_PRECONDITION)
"""A datastore the operation needs is not accessible where it is needed."""
CpuIncompatible = _fault("CpuIncompatible", S.FAILED_PRECONDITION)
"""The destination's CPU lacks features a running VM uses (it keeps those it powered
on with)."""
EVCAdmissionFailed = _fault("EVCAdmissionFailed", S.FAILED_PRECONDITION)
"""An EVC mode a host's CPU cannot provide, or one that would take features from
running VMs."""
InsufficientFailoverResourcesFault = _fault(
    "InsufficientFailoverResourcesFault", S.RESOURCE_EXHAUSTED
)
"""A power-on that would leave the HA cluster too little failover capacity for the
host failures it tolerates."""
SystemError_ = _fault("SystemError", S.INTERNAL)

_BY_NAME: dict[str, type[VimFault]] = {cls.name: cls for cls in VimFault.__subclasses__()}


def fault_from_proto(fault: common_pb2.Fault) -> VimFault:
    cls = _BY_NAME.get(fault.name) or _fault(fault.name, S.UNKNOWN)
    return cls(fault.message, **dict(fault.properties))


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def from_rpc_error(error: grpc.RpcError) -> VimFault:
    """The vSphere fault an RPC failed with; transport failures become HostConnectFault
    or RequestTimeout, so a caller only ever handles VimFault."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                fault = common_pb2.Fault()
                if detail.Unpack(fault):
                    return fault_from_proto(fault)
    code = error.code() if hasattr(error, "code") else None
    text = error.details() if hasattr(error, "details") else str(error)
    if code == S.DEADLINE_EXCEEDED:
        return RequestTimeout(f"the call timed out: {text}")
    if code == S.UNAVAILABLE:
        return HostConnectFault(f"cannot reach the server: {text}")
    if code == S.CANCELLED:
        # A server that stops cancels the calls it has open (a stream, most often).
        return HostConnectFault(f"the server went away (it cancelled the call): {text}")
    if code == S.RESOURCE_EXHAUSTED:
        return InvalidArgument(f"request refused: {text}")
    return SystemError_(f"{code.name if code else 'UNKNOWN'}: {text}")
