"""TLS for ember's TCP endpoints: the GCS service, node relays and object transfer (grpcio's TLS).

Configured by files named in the environment, which every process of a node
inherits from the node's daemon (``ember start --tls-...`` sets them):

- ``EMBER_TLS_CERT`` and ``EMBER_TLS_KEY``: the certificate (chain) and key,
  PEM, that this node's servers present;
- ``EMBER_TLS_CA``: the certificate authority, PEM, that clients check
  servers against;
- ``EMBER_TLS_SERVER_NAME`` (optional): the name clients expect in the
  servers' certificates, when one certificate serves every node (it then
  names the cluster rather than each host).

Set, every TCP listener serves TLS and every client speaks it; a plaintext
peer fails the handshake before a byte of ember's reaches it. Unset, TCP is
plaintext, and a listener bound beyond loopback says so in a warning. Unix
sockets never use TLS: the kernel and the session folder's modes guard them.
The cluster token is checked over TLS as without it.

This module must never fall back to plaintext when TLS is configured, and
never half-configure it: a missing or unreadable file is an error that names it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any

import grpc

from ember import _settings
from ember.exceptions import EmberUserError

log = logging.getLogger("ember.tls")

CERT_ENV, KEY_ENV, CA_ENV, SERVER_NAME_ENV = (
    _settings.variable(name) for name in ("tls_cert", "tls_key", "tls_ca", "tls_server_name"))
FILE_ENVS = (CERT_ENV, KEY_ENV, CA_ENV)


class TlsConfigError(EmberUserError):
    """TLS is half configured, or one of its files cannot be read."""


@dataclass(frozen=True)
class TlsFiles:
    cert: bytes
    key: bytes
    ca: bytes
    server_name: str | None


_loaded: dict[tuple, TlsFiles | None] = {}


def tls_files() -> TlsFiles | None:
    """The configured TLS files, read once per setting; None when TLS is off."""
    settings = _settings.load()
    setting = (settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name)
    if setting not in _loaded:
        _loaded[setting] = _read(*setting)
    return _loaded[setting]


def _read(cert: str | None, key: str | None, ca: str | None, server_name: str | None) -> TlsFiles | None:
    paths = dict(zip(FILE_ENVS, (cert, key, ca)))
    if not any(paths.values()):
        return None
    missing = [name for name, path in paths.items() if not path]
    if missing:
        raise TlsConfigError(f"TLS needs all of {', '.join(FILE_ENVS)}; {', '.join(missing)} is not set "
                             "(set all three, or none for plaintext)")
    contents = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as f:  # type: ignore[arg-type]
                contents[name] = f.read()
        except OSError as exc:
            raise TlsConfigError(f"{name}={path!r} cannot be read: {exc.strerror}") from None
    return TlsFiles(contents[CERT_ENV], contents[KEY_ENV], contents[CA_ENV], server_name or None)


TLS_INFO_KEY = "tls"  # session info: the TLS settings of the node's processes


def tls_info() -> dict[str, dict[str, str]]:
    """This process's TLS settings for a session's info (file paths, not contents); {} when TLS is off."""
    if tls_files() is None:
        return {}
    settings = _settings.load()
    paths = (settings.tls_cert, settings.tls_key, settings.tls_ca)
    return {TLS_INFO_KEY: {name: os.path.abspath(path) for name, path in zip(FILE_ENVS, paths) if path}
            | ({SERVER_NAME_ENV: settings.tls_server_name} if settings.tls_server_name else {})}


def adopt_tls(session: Any) -> None:
    """Speak TLS as ``session``'s node does, unless this process has TLS settings of its own."""
    settings = _settings.load()
    if settings.tls_cert or settings.tls_key or settings.tls_ca:
        return
    try:
        settings = session.read_info().get(TLS_INFO_KEY) or {}
    except (OSError, ValueError):
        return
    for name, value in settings.items():
        if name in (*FILE_ENVS, SERVER_NAME_ENV) and isinstance(value, str):
            os.environ[name] = value


def add_port(server: grpc.Server, address: str, what: str) -> int:
    """Bind ``server`` to ``address``: with TLS when configured (never for a Unix socket); the port, or 0."""
    files = None if address.startswith("unix:") else tls_files()
    if files is None:
        if not address.startswith("unix:") and not is_loopback(address):
            log.warning("%s listens on %s WITHOUT TLS: the cluster token and all data cross the network in "
                        "the clear; set %s (docs/security.md)", what, address, ", ".join(FILE_ENVS))
        return server.add_insecure_port(address)
    credentials = grpc.ssl_server_credentials([(files.key, files.cert)])
    return server.add_secure_port(address, credentials)


def channel(target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``target``: TLS-checked against the CA when configured (never for a Unix socket)."""
    files = None if target.startswith("unix:") else tls_files()
    if files is None:
        return grpc.insecure_channel(target, options=options)
    if files.server_name:
        options = options + [("grpc.ssl_target_name_override", files.server_name)]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=files.ca), options=options)


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` (or a bare host) names this machine's loopback interface only."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
