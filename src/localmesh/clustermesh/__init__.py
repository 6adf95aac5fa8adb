"""The cluster -> this machine direction (`localmesh mesh`): the pieces that do not depend
on the router.

marks          `--version-mark` and `--expose`, parsed and checked
tunnel_wire    the reverse tunnel's few bytes of protocol (documented there)
tunnel_shadow  `localmesh agent shadow`: the process in the shadow pod
tunnel_laptop  this machine's side: a warm pool of tunnel connections to the shadow

Putting the tunnel together:

    secret = tunnel_wire.new_secret()   # per session; to the pod through a Secret
    # shadow pod: `localmesh agent shadow --ports 8080` with env POD_IP (fieldRef
    # status.podIP) and LOCALMESH_TUNNEL_SECRET (secretKeyRef); the tunnel port
    # (tunnel_wire.DEFAULT_TUNNEL_PORT) listens on 127.0.0.1, where port-forwards arrive
    client = TunnelClient(PortForwardDialer(connector, ns, shadow_pod), secret, {8080: 9090})
    client.start()
    async with asyncio.timeout(10):
        await client.wait_ready()
    ...                                 # client.state, client.stats: for `status`
    await client.stop(grace=5)
"""
