"""Password hashing (scrypt, stdlib) and generation. Only hashes are ever stored.

Secrets are drawn from the `source` a caller passes: its runtime's `secure_random`
(vsim/runtime.py), the OS's CSPRNG in a live cluster, seeded in the simulator. Without
one they come from the OS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import string

from vsim.faults import NotAuthenticated

# RFC 7914's interactive parameters: ~16 MiB and tens of milliseconds per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
ALPHABET = string.ascii_letters + string.digits + "!#%*+-.=@^_~"


SYSTEM_RANDOM = secrets.SystemRandom()
"""The OS's CSPRNG, as a `random.Random`: where secrets come from outside the simulator."""
SALT_BYTES = 16


def hash_password(
    password: str, salt: bytes | None = None, source: random.Random = SYSTEM_RANDOM
) -> str:
    """scrypt of password with `salt`, or a new one drawn from `source`."""
    salt = salt if salt is not None else source.randbytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
        return hmac.compare_digest(actual, base64.b64decode(digest))
    except ValueError:  # a damaged hash matches nothing
        return False


def generate_password(length: int = 32, source: random.Random = SYSTEM_RANDOM) -> str:
    """A random password with at least one upper, lower, digit and symbol, as ESXi's
    password policy wants."""
    while True:
        candidate = "".join(source.choice(ALPHABET) for _ in range(length))
        classes = (str.isupper, str.islower, str.isdigit, lambda c: not c.isalnum())
        if all(any(test(c) for c in candidate) for test in classes):
            return candidate


def new_token(source: random.Random = SYSTEM_RANDOM) -> str:
    """An unguessable session token (when `source` is): 32 bytes as URL-safe base64
    without padding, as `secrets.token_urlsafe(32)` makes."""
    return base64.urlsafe_b64encode(source.randbytes(32)).rstrip(b"=").decode()


def token_digest(token: str) -> str:
    """What a server stores instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


TOKEN_LENGTH = 43
"""Every session token a vsim server issues has this many characters (32 bytes)."""
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a session token vsim issued (None if it could be): tokens
    are URL-safe base64 of a fixed length, so anything else is refused before lookup,
    without echoing it (it may be someone's secret pasted in the wrong place)."""
    if not token.isascii():
        return "it holds non-ASCII characters"
    if len(token) != TOKEN_LENGTH:
        return f"it is {len(token)} characters long, a session token has {TOKEN_LENGTH}"
    if not _TOKEN_CHARS.issuperset(token):
        return "it holds characters other than letters, digits, '-' and '_'"
    return None


def check_token(token: str) -> str:
    """`token` if it has the shape of a session token vsim issues; NotAuthenticated
    saying what is wrong with it otherwise."""
    problem = token_problem(token)
    if problem is not None:
        raise NotAuthenticated(
            f"the session token is malformed ({problem}): it is not one a vsim server "
            "issued; log in again and send the token Login returned"
        )
    return token
