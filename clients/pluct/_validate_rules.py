"""buf/validate/validate.proto, from protovalidate (clients/generate.py)."""

from google.protobuf import (
    descriptor_pb2,  # noqa: F401  (validate.proto's imports, registered first)
    descriptor_pool,
    duration_pb2,  # noqa: F401
    field_mask_pb2,  # noqa: F401
    timestamp_pb2,  # noqa: F401
)
from protovalidate import ViolationsPb

_POOL = descriptor_pool.Default()
try:
    _POOL.FindFileByName("buf/validate/validate.proto")
except KeyError:
    _POOL.AddSerializedFile(ViolationsPb.desc().file.proto.to_binary())
