"""Docker Compose v2 for the tests: this machine has Debian bookworm's docker-compose
1.29 only, and docker-compose.yml must be valid for both. Debian trixie packages
Compose v2 as one static binary; it is fetched from the apt mirror this machine uses,
verified the way apt verifies (the suite's signed InRelease, checked with the Debian
archive keyring, gives the package index's SHA-256, which gives the package's), and
kept in the virtualenv.
"""

from __future__ import annotations

import hashlib
import lzma
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from vsim.cluster.image import apt_mirror

SUITE = "trixie"
PACKAGE = "docker-compose"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PLUGIN = "usr/libexec/docker/cli-plugins/docker-compose"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as reply:
        return reply.read()


def checked(data: bytes, sha256: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{what}: SHA-256 mismatch")
    return data


def stanza_field(stanza: str, name: str) -> str:
    for line in stanza.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no {name} field in the package index entry")


def compose_v2(cache: Path | None = None) -> Path:
    """The path of a Compose v2 binary (run as `<path> -p … -f … up`)."""
    cache = cache or Path(sys.prefix) / "libexec"
    binary = cache / "docker-compose-v2"
    if binary.exists():
        return binary
    mirror = apt_mirror().rstrip("/")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        release = Path(tmp) / "InRelease"
        release.write_bytes(fetch(f"{mirror}/dists/{SUITE}/InRelease"))
        signed = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), "--output", "-", str(release)],
            capture_output=True,
            check=False,
        )
        if signed.returncode != 0:
            raise RuntimeError(f"{SUITE}'s InRelease is not signed by a Debian archive key")
        index = f"main/binary-{arch}/Packages.xz"
        (index_sum,) = {
            line.split()[0]
            for line in signed.stdout.decode().splitlines()
            if line.split()[-1:] == [index] and len(line.split()[0]) == 64
        }
        packages = lzma.decompress(
            checked(fetch(f"{mirror}/dists/{SUITE}/{index}"), index_sum, index)
        )
        stanza = next(
            s for s in packages.decode().split("\n\n") if s.startswith(f"Package: {PACKAGE}\n")
        )
        deb = Path(tmp) / "compose.deb"
        filename = stanza_field(stanza, "Filename")
        deb.write_bytes(
            checked(fetch(f"{mirror}/{filename}"), stanza_field(stanza, "SHA256"), filename)
        )
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        cache.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        partial.write_bytes((Path(tmp) / "root" / PLUGIN).read_bytes())
        partial.chmod(0o755)
        partial.rename(binary)
    return binary
