"""Plan signatures: what the centre signs, only the trusted key verifies, unaltered."""

from __future__ import annotations

import msgspec
import pytest

from edge_agent.cli import load_plan
from edge_agent.messages import decode, encode, PlanMessage
from edge_agent.signatures import (generate_key, load_private_key, load_public_key, sign_plan,
                                   verify_plan)

from conftest import CONFIGS

PLAN = load_plan(CONFIGS / "plans" / "main-oak-am-peak.toml")


@pytest.fixture(scope="module")
def keys():
    private, public = generate_key()
    return load_private_key(private), {"central": load_public_key(public)}


def test_signed_plan_verifies_after_the_wire(keys):
    key, trusted = keys
    message = decode(encode(sign_plan("downtown", PLAN, key, "central")), PlanMessage)
    assert verify_plan(message, trusted)


def test_altered_plan_other_site_or_unknown_key_fail(keys):
    key, trusted = keys
    message = sign_plan("downtown", PLAN, key, "central")
    altered = msgspec.structs.replace(message, plan=msgspec.structs.replace(PLAN, offset=31.0))
    assert not verify_plan(altered, trusted)
    assert not verify_plan(msgspec.structs.replace(message, site="uptown"), trusted)
    assert not verify_plan(msgspec.structs.replace(message, key_id="other"), trusted)
    other_private, _ = generate_key()
    forged = sign_plan("downtown", PLAN, load_private_key(other_private), "central")
    assert not verify_plan(forged, trusted)


def test_keys_of_the_wrong_kind_are_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    pub = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        load_private_key(pem)
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_key(pub)
