"""The Open Inference Protocol's messages, from the descriptor set ``scripts/gen_proto.py`` makes,
in a descriptor pool of their own: ``tritonclient`` registers the same package under another file
name in protobuf's default pool, and one process may hold both."""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(
    (resources.files(__package__) / "open_inference.binpb").read_bytes()
).file:
    POOL.Add(_file)

FILE = POOL.FindFileByName("inference/open_inference_grpc.proto")
SERVICE = FILE.services_by_name["GRPCInferenceService"]
SERVICE_NAME: str = SERVICE.full_name


def message(name: str) -> Any:
    """The class of message ``inference.<name>``."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
ModelStreamInferResponse = message("ModelStreamInferResponse")
InferTensorContents = message("InferTensorContents")


def pool_with(*files: descriptor.FileDescriptor) -> descriptor_pool.DescriptorPool:
    """A pool of ``files`` (with what they import) and the protocol's: what server reflection
    serves, since it reads one pool."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in (*files, FILE):
        add(file)
    return pool
