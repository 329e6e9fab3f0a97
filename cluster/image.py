"""The vsim container image, built with no image registry (`make image`).

1. A base image: a minimal Debian rootfs made by debootstrap from the apt mirror
   this machine is configured with (read from its apt sources when building, never
   written into the repository), imported with `docker import`.
2. A wheelhouse: the project and every dependency as wheels, made on this machine
   from PyPI, so the image build itself needs no network.
3. The image: the base plus a virtualenv installed from the wheelhouse only.

Each image is tagged by a hash of its inputs (the base's recipe; pyproject.toml and
every source file), so a second `make image` with nothing changed only checks that
the tags exist. Prints the image's name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "iproute2", "procps")
SOURCES = ("pyproject.toml", "proto", "vsim", "cluster", "host", "storage", "vcenter")
IMAGE = "vsim"
BASE = "vsim-base"
DOCKERFILE = """\
FROM {base}
COPY wheelhouse /wheels
RUN python3 -m venv /opt/vsim \\
 && /opt/vsim/bin/pip install --no-index --find-links /wheels --no-cache-dir vsim \\
 && rm -rf /wheels
ENV PATH=/opt/vsim/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONUNBUFFERED=1 \\
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /data
"""


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kwargs)


def image_exists(tag: str) -> bool:
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    return found.returncode == 0


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses for `suite` (deb822 or one-line)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if suite in suites and "security" not in fields.get("URIs", ""):
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(rf"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{suite}\s", line)
                if m:
                    return m.group(1)
    raise SystemExit(f"no apt source for Debian {suite} on this machine (see /etc/apt)")


def base_tag() -> str:
    recipe = json.dumps({"suite": SUITE, "packages": PACKAGES, "variant": "minbase"})
    return f"{BASE}:{SUITE}-{digest(recipe.encode())}"


def build_base(tag: str) -> None:
    """debootstrap a minimal rootfs and `docker import` it as `tag`."""
    if shutil.which("debootstrap") is None:
        run("apt-get", "install", "-y", "-q", "debootstrap", stdout=subprocess.DEVNULL)
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="vsim-rootfs-") as root:
        run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            root,
            mirror,
            stdout=subprocess.DEVNULL,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(Path(root) / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        run("docker", "import", "-", tag, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the rootfs failed")


def sources_digest() -> str:
    parts = []
    for name in SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            parts += [str(f.relative_to(REPO)).encode(), f.read_bytes()]
    return digest(*parts)


def build_image(tag: str, base: str) -> None:
    with tempfile.TemporaryDirectory(prefix="vsim-image-") as context:
        wheels = Path(context) / "wheelhouse"
        run(
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO),
        )  # fmt: skip
        (Path(context) / "Dockerfile").write_text(DOCKERFILE.format(base=base))
        run("docker", "build", "--quiet", "--tag", tag, context, stdout=subprocess.DEVNULL)


def ensure_image() -> tuple[str, dict[str, float]]:
    """The image for this checkout, built if missing; and how long each step took."""
    timings: dict[str, float] = {}
    base = base_tag()
    started = time.monotonic()
    if not image_exists(base):
        build_base(base)
        timings["base_s"] = round(time.monotonic() - started, 1)
    tag = f"{IMAGE}:{digest(base.encode(), sources_digest().encode())}"
    started = time.monotonic()
    if not image_exists(tag):
        build_image(tag, base)
        timings["image_s"] = round(time.monotonic() - started, 1)
    run("docker", "tag", tag, f"{IMAGE}:latest")
    return tag, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the tag and timings as JSON")
    args = parser.parse_args()
    tag, timings = ensure_image()
    print(json.dumps({"image": tag, **timings}) if args.json else tag)


if __name__ == "__main__":
    main()
