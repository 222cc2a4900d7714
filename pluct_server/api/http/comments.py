"""Leading comments of the protos, read from the descriptor set generated with source info."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

_LOGGER = logging.getLogger(__name__)

# Field numbers inside descriptor.proto that a SourceCodeInfo path walks through.
_FILE_MESSAGES = 4
_FILE_SERVICES = 6
_MESSAGE_FIELDS = 2
_SERVICE_METHODS = 2


class Comments:
    """The one-line-per-element comments of services, methods, messages and fields, by full name."""

    def __init__(self, by_name: dict[str, str]) -> None:
        self._by_name = by_name

    @classmethod
    def load(cls, package: str = "pluct", resource: str = "descriptor_set.binpb") -> Comments:
        """Read the descriptor set shipped with the generated stubs; no file means no comments."""
        try:
            data = resources.files(package).joinpath(resource).read_bytes()
            files = descriptor_pb2.FileDescriptorSet.FromString(data).file
        except (OSError, ModuleNotFoundError, DecodeError):
            # Descriptions are a courtesy; the routes themselves come from the compiled stubs.
            _LOGGER.warning("no proto comments found in %s/%s", package, resource)
            return cls({})
        return cls(dict(_comments(files)))

    def get(self, full_name: str) -> str:
        """Return the comment of the element called `full_name`, or ""."""
        return self._by_name.get(full_name, "")


def _comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> Iterable[tuple[str, str]]:
    for file in files:
        prefix = f"{file.package}." if file.package else ""
        for location in file.source_code_info.location:
            text = " ".join(location.leading_comments.split())
            name = _name_at(file, list(location.path), prefix)
            if text and name:
                yield name, text


def _name_at(file: descriptor_pb2.FileDescriptorProto, path: list[int], prefix: str) -> str:
    if len(path) >= 2 and path[0] == _FILE_SERVICES:
        service = file.service[path[1]]
        if len(path) == 2:
            return prefix + service.name
        if len(path) == 4 and path[2] == _SERVICE_METHODS:
            return f"{prefix}{service.name}.{service.method[path[3]].name}"
    if len(path) >= 2 and path[0] == _FILE_MESSAGES:
        message = file.message_type[path[1]]
        if len(path) == 2:
            return prefix + message.name
        if len(path) == 4 and path[2] == _MESSAGE_FIELDS:
            return f"{prefix}{message.name}.{message.field[path[3]].name}"
    return ""
