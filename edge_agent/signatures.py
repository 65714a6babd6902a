"""Ed25519 signatures of plans: the centre signs, every edge verifies before anything else.

What is signed is :func:`edge_agent.messages.plan_signing_bytes` (the site and the canonical
plan), so a plan cannot be altered, nor replayed at another site, without the key.
"""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.messages import PlanMessage, plan_signing_bytes
from edge_agent.plan import TimingPlan

__all__ = ["generate_key", "load_private_key", "load_public_key", "sign_plan", "verify_plan"]


def generate_key() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM; ValueError for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def sign_plan(site: str, plan: TimingPlan, key: Ed25519PrivateKey, key_id: str) -> PlanMessage:
    """The plan message for ``site``, signed with ``key``."""
    signature = key.sign(plan_signing_bytes(site, plan))
    return PlanMessage(site=site, plan=plan, key_id=key_id,
                       signature=base64.b64encode(signature).decode("ascii"))


def verify_plan(message: PlanMessage, trusted: dict[str, Ed25519PublicKey]) -> bool:
    """True only if the message is signed by the trusted key it names."""
    key = trusted.get(message.key_id)
    if key is None:
        return False
    try:
        key.verify(message.signature_bytes, plan_signing_bytes(message.site, message.plan))
    except InvalidSignature:
        return False
    return True
