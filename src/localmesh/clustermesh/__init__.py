"""The cluster -> this machine direction (`localmesh mesh`): the pieces that do not depend
on the router.

marks          `--version-mark` and `--expose`, parsed and checked
tunnel_wire    the reverse tunnel's few bytes of protocol (documented there)
tunnel_shadow  `localmesh agent shadow`: the process in the shadow pod
tunnel_laptop  this machine's side: a warm pool of tunnel connections to the shadow
"""
