"""A vMotion ticket's sizes, shared by vCenter (which makes tickets) and the hosts
(which check them): a migration's secret, and encrypted vMotion's one-time AES-256
key and 64-bit nonce."""

SECRET_BYTES = 32
KEY_BYTES = 32
NONCE_BYTES = 8
