"""``hash_value`` keys HMAC-SHA256 once per salt; its hashes stay exactly ``hmac``'s."""

from __future__ import annotations

import hashlib
import hmac
from concurrent.futures import ThreadPoolExecutor

import pytest

from leadscore.identifiers import hash_value


@pytest.mark.parametrize("salt", ["", "s", "salt-xyz", "k" * 64, "k" * 65, "sält-" * 40])
def test_hash_value_equals_hmac_sha256(salt: str) -> None:
    for value in ("13800138000", "a@b.cn", "wx_abc123", "人"):
        expected = hmac.new(salt.encode(), f"phone:{value}".encode(), hashlib.sha256)
        assert hash_value("phone", value, salt) == "phone:" + expected.hexdigest()[:32]


def test_hash_value_is_thread_safe() -> None:
    values = [f"1380013{i:04d}" for i in range(2000)]
    expected = [hash_value("phone", v, "salt") for v in values]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda v: hash_value("phone", v, "salt"), values)) == expected
