"""localmesh: a local, Envoy-powered pseudo service mesh in front of real Kubernetes clusters."""

__version__ = "0.1.0"
