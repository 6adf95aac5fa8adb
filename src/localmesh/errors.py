"""The exceptions localmesh raises on purpose.

Every error a user can cause derives from `LocalmeshError`; the CLI prints its message
(no traceback) and exits with `exit_code`. Anything else is a bug and keeps its traceback.

    LocalmeshError
    ├── ConfigError          services.yaml / mocks.yaml is invalid (carries every issue found)
    ├── KubeError            the cluster could not be reached or refused a request
    │   └── TargetError      one services.yaml entry cannot be resolved (names the entry)
    ├── EnvoyError           the Envoy binary is missing, will not start, or its port is taken
    ├── HostsFileError       /etc/hosts cannot be read or written
    └── ControlError         no running instance answers on the control socket
"""

from __future__ import annotations


class LocalmeshError(Exception):
    """Base class of the errors a user can cause and fix; printed without a traceback."""

    exit_code = 1


class ConfigError(LocalmeshError):
    exit_code = 2


class KubeError(LocalmeshError):
    pass


class TargetError(KubeError):
    pass


class EnvoyError(LocalmeshError):
    pass


class HostsFileError(LocalmeshError):
    pass


class ControlError(LocalmeshError):
    pass
