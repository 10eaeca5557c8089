"""A test CA and a server certificate, so clients can verify the stand-in like the real host."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"


def certificate_authority(tls_dir: Path) -> trustme.CA:
    """The CA kept in ``tls_dir`` (``ca.pem``, ``ca-key.pem``), created there on first use."""
    cert_path, key_path = tls_dir / CA_CERT_FILE, tls_dir / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="CMC relay stand-in")
    key_path.touch(mode=0o600)
    key_path.write_bytes(ca.private_key_pem.bytes())
    cert_path.write_bytes(ca.cert_pem.bytes())
    return ca


def server_context(tls_dir: Path, names: tuple[str, ...]) -> ssl.SSLContext:
    """A server context with a fresh certificate for ``names``, signed by the CA in ``tls_dir``.

    The CA is reused once made, so a Postfix configured with ``smtp_tls_CAfile =
    tls_dir/ca.pem`` keeps trusting stand-ins restarted on that directory.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority(tls_dir).issue_cert(*names).configure_cert(context)
    return context


def client_context(ca_path: Path) -> ssl.SSLContext:
    """A client context that trusts only the stand-in's CA, names checked."""
    return ssl.create_default_context(cafile=str(ca_path))
