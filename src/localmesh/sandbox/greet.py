"""A tiny gRPC client for the sandbox's greeter, for people without grpcurl.

    python -m localmesh.sandbox.greet --authority users-api.localhost 127.0.0.1:8080

Lists the services the server offers (server reflection), then calls Greeter.SayHello and
prints which pod answered. Exit code 1 when the call fails.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc


def list_services(channel: grpc.Channel, timeout: float) -> list[str]:
    """Service names via server reflection, as `grpcurl list` prints them."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=timeout)
    return sorted(
        service.name
        for response in responses
        for service in response.list_services_response.service
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localmesh.sandbox.greet")
    parser.add_argument("target", help="address of the mesh listener, e.g. 127.0.0.1:8080")
    parser.add_argument("--authority", help="the host to route by (e.g. users-api.localhost)")
    parser.add_argument("--name", default="localmesh", help="name to greet")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            for name in list_services(channel, args.timeout):
                print(name)
            stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.SayHello(greeter_pb2.HelloRequest(name=args.name), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"{reply.message} (from pod {reply.namespace}/{reply.pod})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
