"""Self-signed certificates and SHA-256 thumbprints, as vCenter and ESXi make them.

Each server makes its certificate on first start and keeps it (key 0600) in its data
dir, so its thumbprint stays the same across restarts. Clients pin the thumbprint.

A client needs only the standard library here (the thumbprint, and the common name
read from the DER itself): `cryptography`, which makes certificates, is imported by
the servers' code that does, so a CLI command does not pay for it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

CERT_FILE = "rui.crt"  # the names ESXi uses under /etc/vmware/ssl
KEY_FILE = "rui.key"
VALIDITY = datetime.timedelta(days=5 * 365)


@dataclass(frozen=True)
class Identity:
    """A server's certificate and key (PEM) and the certificate's thumbprint."""

    cert_pem: bytes
    key_pem: bytes
    common_name: str

    @property
    def thumbprint(self) -> str:
        return thumbprint_of_pem(self.cert_pem)


def thumbprint_of_der(der: bytes) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex (vSphere's form)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def thumbprint_of_pem(pem: bytes) -> str:
    return thumbprint_of_der(ssl.PEM_cert_to_DER_cert(pem.decode()))


def normalize_thumbprint(text: str) -> str:
    """Accepts 'ab:cd:..' or 'abcd..' in any case; returns 'AB:CD:..'. Raises ValueError."""
    digits = text.strip().replace(":", "").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"not a SHA-256 thumbprint: {text[:120]!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order of NIST P-256's base point: a private key is a number in [1, order)."""


def make_identity(
    common_name: str,
    now: datetime.datetime | None = None,
    secure_random: random.Random | None = None,
) -> Identity:
    """A new self-signed certificate for common_name, valid for localhost and 127.0.0.1.

    With `secure_random` (a runtime's), the key and serial are drawn from it and the
    signature is deterministic (RFC 6979), so a simulated runtime makes the same
    certificate from the same seed; without, they come from the OS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if secure_random is None:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
    else:
        key = ec.derive_private_key(secure_random.randrange(1, P256_ORDER), ec.SECP256R1())
        serial = secure_random.getrandbits(159) | 1  # positive, at most 20 octets
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [
        x509.DNSName(common_name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=secure_random is not None)
    )
    return Identity(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        common_name=common_name,
    )


COMMON_NAME_OID = bytes([0x55, 0x04, 0x03])
"""2.5.4.3, id-at-commonName, as its DER content."""


def _der_items(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) of each DER element in der, in order."""
    items, i = [], 0
    while i < len(der):
        tag, length = der[i], der[i + 1]
        i += 2
        if length & 0x80:  # long form: the next (length & 0x7F) bytes are the length
            count = length & 0x7F
            length = int.from_bytes(der[i : i + count], "big")
            i += count
        if i + length > len(der):
            raise ValueError("truncated DER")
        items.append((tag, der[i : i + length]))
        i += length
    return items


def common_name_of(pem: bytes) -> str:
    """The subject's common name (CN) of a PEM certificate. Read from the DER:
    Certificate = SEQUENCE {tbsCertificate, ...}; tbsCertificate = SEQUENCE {[0]
    version, serial, signature, issuer, validity, subject, ...}; subject = SEQUENCE OF
    SET OF SEQUENCE {type OID, value}. ValueError if it has none."""
    try:
        ((_, certificate),) = _der_items(ssl.PEM_cert_to_DER_cert(pem.decode()))[:1]
        tbs = _der_items(_der_items(certificate)[0][1])
        fields = tbs[1:] if tbs[0][0] == 0xA0 else tbs  # [0] version is optional
        subject = fields[4][1]
        for _, rdn in _der_items(subject):
            for _, attribute in _der_items(rdn):
                (_, oid), (_, value) = _der_items(attribute)[:2]
                if oid == COMMON_NAME_OID:
                    return value.decode()
    except (IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"not an X.509 certificate: {e}") from None
    raise ValueError("the certificate's subject has no common name")


def load_or_create_identity(directory: Path, common_name: str) -> Identity:
    """The identity kept in directory, made there on first start."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert_pem = cert_path.read_bytes()
        return Identity(cert_pem, key_path.read_bytes(), common_name_of(cert_pem))
    identity = make_identity(common_name)
    write_private(key_path, identity.key_pem)
    cert_path.write_bytes(identity.cert_pem)
    return identity


def write_private(path: Path, data: bytes) -> None:
    """Writes a secret readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fetch_server_certificate(host: str, port: int, timeout: float = 5.0) -> bytes:
    """The PEM certificate a TLS server presents, without verifying it (to pin it)."""
    # Not create_default_context(): it loads the system's CA store (~35 ms, on every
    # CLI command), which a check by thumbprint never uses.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port). Raises ValueError."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint must be HOST:PORT, got {endpoint[:200]!r}")
    return host.strip("[]"), int(port)
