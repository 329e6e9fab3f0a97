"""Certificates and thumbprints, as vCenter and ESXi make and pin them."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vsim.tls import (
    CERT_FILE,
    KEY_FILE,
    common_name_of,
    load_or_create_identity,
    make_identity,
    normalize_thumbprint,
    split_endpoint,
    thumbprint_of_der,
    write_private,
)

THUMBPRINT = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")
HEX64 = "0123456789abcdef" * 4


def test_thumbprint_is_64_upper_hex_digits_with_colons():
    identity = make_identity("esxi-01")
    assert THUMBPRINT.match(identity.thumbprint)
    assert len(identity.thumbprint) == 64 + 31


def test_thumbprint_is_sha256_of_the_der_certificate():
    identity = make_identity("esxi-01")
    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert identity.thumbprint == thumbprint_of_der(der)
    assert thumbprint_of_der(b"") == (
        "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:"
        "27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
    )


def test_each_identity_has_its_own_thumbprint_and_common_name():
    a, b = make_identity("esxi-01"), make_identity("esxi-02")
    assert a.thumbprint != b.thumbprint
    assert common_name_of(a.cert_pem) == "esxi-01"
    assert common_name_of(b.cert_pem) == "esxi-02"


@pytest.mark.parametrize(
    "text",
    [
        HEX64,
        HEX64.upper(),
        ":".join(HEX64[i : i + 2] for i in range(0, 64, 2)),
        "  " + HEX64 + "\n",
    ],
)
def test_normalize_thumbprint_accepts_any_case_with_or_without_colons(text: str):
    expected = ":".join(HEX64.upper()[i : i + 2] for i in range(0, 64, 2))
    assert normalize_thumbprint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", HEX64[:-1], HEX64 + "0", "g" + HEX64[1:], HEX64[:-2] + "-0", "sha1:" + HEX64[5:]],
)
def test_normalize_thumbprint_rejects_non_sha256_text(text: str):
    with pytest.raises(ValueError, match="thumbprint"):
        normalize_thumbprint(text)


def test_normalize_thumbprint_error_for_huge_input_is_short():
    with pytest.raises(ValueError) as excinfo:
        normalize_thumbprint("Z" * 10_000_000)
    assert len(str(excinfo.value)) < 300


def test_load_or_create_identity_keeps_the_same_identity(tmp_path: Path):
    first = load_or_create_identity(tmp_path / "ssl", "esxi-01")
    second = load_or_create_identity(tmp_path / "ssl", "ignored-on-second-start")
    assert second.thumbprint == first.thumbprint
    assert second.key_pem == first.key_pem
    assert second.common_name == "esxi-01"


def test_load_or_create_identity_key_is_owner_only(tmp_path: Path):
    load_or_create_identity(tmp_path, "vcenter")
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert (tmp_path / CERT_FILE).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not list(tmp_path.glob("*.tmp"))


def test_write_private_replaces_content_with_mode_0600(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        ("localhost:443", ("localhost", 443)),
        ("10.0.0.1:9443", ("10.0.0.1", 9443)),
        ("[::1]:8443", ("::1", 8443)),
    ],
)
def test_split_endpoint(endpoint: str, expected: tuple[str, int]):
    assert split_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint", ["", "localhost", ":443", "host:", "host:0", "host:65536", "host:http", "h:-1"]
)
def test_split_endpoint_rejects_bad_endpoints(endpoint: str):
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_endpoint(endpoint)


def test_common_name_is_the_subjects_not_the_issuers():
    """A CA-signed certificate (long-form DER lengths, a non-ASCII name): the CN read
    from the DER is its subject's, as cryptography reads it."""
    import datetime
    import ssl

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VMware")
        return x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("vcenter-é.example"))
        .issuer_name(name("VMCA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    assert common_name_of(cert.public_bytes(serialization.Encoding.PEM)) == "vcenter-é.example"
    with pytest.raises(ValueError):
        common_name_of(ssl.DER_cert_to_PEM_cert(b"\x30\x03\x02\x01\x01").encode())
