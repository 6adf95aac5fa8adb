"""Credentials from kubeconfig files, as kubectl reads them, handed to non-kubernetes code."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.errors import KubeError
from localmesh.kube import load_access
from localmesh.sandbox.certs import make_serving_certs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return str(path)


def test_client_certificate_and_custom_ca(tmp_path: Path) -> None:
    certs = make_serving_certs()
    path = write(
        tmp_path,
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(certs.ca_pem)},
        {"client-certificate-data": b64(certs.cert_pem), "client-key-data": b64(certs.key_pem)},
    )
    access = load_access(path)
    assert access.server == "https://127.0.0.1:6443"
    assert access.context == "ctx"
    assert access.ssl_context is not None
    assert access.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert access.ssl_context.get_ca_certs()  # the kubeconfig's CA, loaded
    assert access.headers_now() == {}  # a certificate, no token


def test_token_skip_verify_and_server_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "server": "https://127.0.0.1:6443/prefix/",
            "insecure-skip-tls-verify": True,
            "tls-server-name": "kubernetes.default",
        },
        {"token": "abc"},
    )
    access = load_access(path)
    assert access.server == "https://127.0.0.1:6443/prefix"
    assert access.ssl_context is not None
    assert access.ssl_context.verify_mode == ssl.CERT_NONE
    assert access.server_hostname == "kubernetes.default"
    assert asyncio.run(access.headers()) == {"Authorization": "Bearer abc"}


def test_context_selection_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {"server": "http://127.0.0.1:8080"}, {"token": "t"})
    assert load_access(path, context="ctx").ssl_context is None  # plain http: no TLS
    with pytest.raises(KubeError, match=r"context .nope. not found.*available contexts: ctx"):
        load_access(path, context="nope")
    with pytest.raises(KubeError, match="kubeconfig"):
        load_access(str(tmp_path / "missing"))
