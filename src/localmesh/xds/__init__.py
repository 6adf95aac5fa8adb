"""localmesh's xDS control plane: DesiredState -> Envoy resources -> snapshot -> cache -> ADS.

Layers (each module's docstring has its interface):

    resources   pure builders of the Envoy messages (localmesh.xds.proto types)
    proto       those messages: plain objects encoded from schema_table (generated from
                envoy-data-plane's metadata by schema_gen), so building, encoding and
                dumping never load the typed bindings or their pydantic validators
    codec       protobuf encoding of those and of typed (betterproto2) messages
    wire_json   proto3 JSON straight from encoded bytes (dumps, status)
    snapshot    `build_snapshot(state, previous)` -> immutable `Snapshot` (bytes + content
                versions, only changed pieces re-encoded); `render_xds_view(snapshot, bootstrap)`
    static      `render_static_config(view)`: the one static Envoy config renderer
                (`dump-envoy-config --format envoy`, from a config or a live instance)
    cache       `SnapshotCache`: snapshots per node id, per-stream ACK/NACK state,
                make-before-break ordering, `wait_for_ack()`, `status()` (never imports grpc)
    wire        DiscoveryResponse bytes from cached resource bytes
    discovery   DiscoveryRequests read from their bytes (what the server needs of them)
    server      `AdsService(cache).register(server)`, `start_server(cache, socket_path)`

Typical use:

    cache = SnapshotCache()
    server = await start_server(cache, paths.xds_socket)
    snapshot = build_snapshot(state, cache.snapshot)
    cache.set_snapshot(snapshot)
    async with asyncio.timeout(10):
        await cache.wait_for_ack(snapshot.version)
    ...
    await server.stop(grace=1.0)          # after Envoy has stopped

This package imports nothing itself, so `localmesh.xds.cache` stays free of grpc.
"""
