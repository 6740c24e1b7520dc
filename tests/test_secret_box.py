"""Secrets at rest (realtime_core/secret_box.py)."""

from __future__ import annotations

import pytest

from realtime_core.secret_box import SecretBox, SecretBoxError, is_sealed


def test_a_sealed_secret_opens_under_its_key_only() -> None:
    box = SecretBox("key-one")
    sealed = box.seal("s3cret")
    assert is_sealed(sealed) and "s3cret" not in sealed
    assert box.open(sealed) == "s3cret"
    with pytest.raises(SecretBoxError):
        SecretBox("key-two").open(sealed)


def test_equal_secrets_do_not_look_equal() -> None:
    box = SecretBox("k")
    assert box.seal("same") != box.seal("same")


def test_a_tampered_value_does_not_open() -> None:
    box = SecretBox("k")
    sealed = box.seal("secret")
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SecretBoxError):
        box.open(tampered)
    with pytest.raises(SecretBoxError):
        box.open("enc:v1:!!")


def test_plain_text_from_before_encryption_passes_through() -> None:
    assert SecretBox("k").open("legacy-plain") == "legacy-plain"


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="DB_ENC_KEY"):
        SecretBox("")
