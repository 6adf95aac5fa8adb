"""localmesh's xDS control plane: MeshSpec -> Envoy resources -> snapshot -> cache -> ADS.

Layers (each module's docstring has its interface):

    resources   pure builders of the Envoy messages; `render_static_config(mesh)` for
                `dump-envoy-config --format envoy`
    codec       protobuf encoding without betterproto2's per-call re-validation
    snapshot    `build_snapshot(mesh, previous)` -> immutable `Snapshot` (bytes + content
                versions, only changed pieces re-encoded); `render_xds_view(snapshot, bootstrap)`
    cache       `SnapshotCache`: per-stream ACK/NACK state, make-before-break ordering,
                `wait_for_ack()`, `status()` (never imports grpc)
    wire        DiscoveryResponse bytes from cached resource bytes
    server      `AdsService(cache).register(server)`, `start_server(cache, socket_path)`

Typical use:

    cache = SnapshotCache()
    server = await start_server(cache, paths.xds_socket)
    snapshot = build_snapshot(mesh, cache.snapshot)
    cache.set_snapshot(snapshot)
    async with asyncio.timeout(10):
        await cache.wait_for_ack(snapshot.version)
    ...
    await server.stop(grace=1.0)          # after Envoy has stopped

This package imports nothing itself, so `localmesh.xds.cache` stays free of grpc.
"""
