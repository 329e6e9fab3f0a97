"""Password hashing and generation (real scrypt parameters)."""

from __future__ import annotations

import pytest

from vsim.passwords import (
    ALPHABET,
    generate_password,
    hash_password,
    new_token,
    token_digest,
    verify_password,
)


def test_hash_verifies_only_its_password():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_hash_is_salted():
    assert hash_password("same") != hash_password("same")
    assert hash_password("same", salt=b"s" * 16) == hash_password("same", salt=b"s" * 16)


@pytest.mark.parametrize("stored", ["", "plain-text", "md5$abc", "scrypt$1$2$3$4"])
def test_verify_rejects_malformed_hashes(stored: str):
    assert verify_password("plain-text", stored) is False


@pytest.mark.parametrize("length", [8, 20, 32])
def test_generated_passwords_meet_the_esxi_policy(length: int):
    for _ in range(50):
        password = generate_password(length)
        assert len(password) == length
        assert set(password) <= set(ALPHABET)
        assert any(c.isupper() for c in password)
        assert any(c.islower() for c in password)
        assert any(c.isdigit() for c in password)
        assert any(not c.isalnum() for c in password)


def test_generated_passwords_differ():
    assert len({generate_password(32) for _ in range(100)}) == 100


def test_tokens_are_unguessable_and_stored_as_digests():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 40
    digest = token_digest(token)
    assert len(digest) == 64 and token not in digest
    assert token_digest(token) == digest
