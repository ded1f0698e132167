"""The stage API's generated messages and gRPC stubs, for code that serves or fakes it.

Operators never need this module: :class:`clara.Driver` speaks the stage API for them. A
platform that serves the API (the mock in ``server_mock``), a benchmark, or a test that plays
the platform's side imports the generated code from here rather than from the driver's private
``clara._proto`` package::

    from clara.stage_api import stage_service_pb2, stage_service_pb2_grpc

The contract itself is ``protos/nvidia/clara/platform/stage/v1/stage_service.proto``. Importing
this module loads the protobuf runtime (``import clara`` alone does not).
"""

from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2, stage_service_pb2_grpc

__all__ = ["stage_service_pb2", "stage_service_pb2_grpc"]
