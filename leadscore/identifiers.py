"""Normalise raw identifiers (phone, WeChat id, e-mail, cookie id) and hash them with a salt.

Raw identifiers never leave this module: everything downstream sees ``<type>:<hex>`` hashes.
A value that cannot be used gets a reason instead of a hash (counted by callers, never raised).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

_SHA256_BLOCK = 64
ID_TYPES: tuple[str, ...] = ("phone", "wechat", "email", "cookie")

_PHONE_STRIP = re.compile(r"[\s\-().]")
_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_EMAIL = re.compile(r"^[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}$")
_WECHAT = re.compile(r"^[a-z][a-z0-9_\-]{5,19}$")
_COOKIE = re.compile(r"^[a-z0-9][a-z0-9_\-.:]{3,127}$")

FREE_EMAIL_DOMAINS = frozenset(
    {"qq.com", "163.com", "126.com", "gmail.com", "hotmail.com", "outlook.com", "sina.com",
     "yahoo.com", "foxmail.com", "sohu.com", "aliyun.com", "139.com", "yeah.net"}
)


@dataclass(frozen=True)
class Normalised:
    """Result of normalising one raw identifier: a value, or the reason it was rejected."""

    id_type: str
    value: str | None
    reason: str | None = None


def normalise_phone(raw: str) -> Normalised:
    """Mainland mobile numbers: drop separators, a +86/0086/86 prefix; 11 digits starting 1[3-9]."""
    s = _PHONE_STRIP.sub("", raw.strip())
    if s.startswith("+86"):
        s = s[3:]
    elif s.startswith("0086"):
        s = s[4:]
    elif s.startswith("86") and len(s) == 13:
        s = s[2:]
    if not s:
        return Normalised("phone", None, "empty")
    if not s.isdigit():
        return Normalised("phone", None, "non_digit")
    if not _CN_MOBILE.match(s):
        return Normalised("phone", None, "not_a_mobile_number")
    if len(set(s[3:])) == 1:
        return Normalised("phone", None, "placeholder_number")
    return Normalised("phone", s)


def normalise_email(raw: str) -> Normalised:
    s = raw.strip().lower()
    if not s:
        return Normalised("email", None, "empty")
    if not _EMAIL.match(s):
        return Normalised("email", None, "malformed_email")
    return Normalised("email", s)


def normalise_wechat(raw: str) -> Normalised:
    s = raw.strip().lower()
    if not s:
        return Normalised("wechat", None, "empty")
    if not _WECHAT.match(s):
        return Normalised("wechat", None, "malformed_wechat_id")
    return Normalised("wechat", s)


def normalise_cookie(raw: str) -> Normalised:
    s = raw.strip().lower()
    if not s:
        return Normalised("cookie", None, "empty")
    if not _COOKIE.match(s):
        return Normalised("cookie", None, "malformed_cookie_id")
    return Normalised("cookie", s)


_NORMALISERS = {
    "phone": normalise_phone,
    "email": normalise_email,
    "wechat": normalise_wechat,
    "cookie": normalise_cookie,
}


def normalise(id_type: str, raw: object) -> Normalised:
    """Normalise one raw identifier of ``id_type``; never raises on bad values."""
    if id_type not in _NORMALISERS:
        raise ValueError(f"unknown identifier type {id_type!r}; expected one of {ID_TYPES}")
    if raw is None:
        return Normalised(id_type, None, "missing")
    if not isinstance(raw, str):
        return Normalised(id_type, None, "not_a_string")
    if len(raw) > 256:
        return Normalised(id_type, None, "too_long")
    return _NORMALISERS[id_type](raw)


def hash_value(id_type: str, normalised_value: str, salt: str) -> str:
    """Salted HMAC-SHA256 of a normalised identifier, as ``<type>:<32 hex chars>``."""
    inner, outer = _hmac_pads(salt)
    inner = inner.copy()
    inner.update(f"{id_type}:{normalised_value}".encode())
    outer = outer.copy()
    outer.update(inner.digest())
    return f"{id_type}:{outer.digest()[:16].hex()}"


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=8)
def _hmac_pads(salt: str) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) of ``salt`` keyed once: SHA-256 states fed with the inner and
    outer padded key. Copying them per value gives ``hmac.digest``'s bytes at a third of its
    cost (it sets the key up again on every call)."""
    key = salt.encode()
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def hash_identifier(id_type: str, raw: object, salt: str) -> tuple[str | None, str | None]:
    """Normalise and hash one raw identifier: ``(hash, None)`` or ``(None, reason)``."""
    n = normalise(id_type, raw)
    if n.value is None:
        return None, n.reason
    return hash_value(id_type, n.value, salt), None


def email_domain_type(raw_email: object) -> str:
    """``none``, ``invalid``, ``free`` or ``corporate`` (edu domains count as ``edu``)."""
    if raw_email is None or (isinstance(raw_email, str) and not raw_email.strip()):
        return "none"
    n = normalise("email", raw_email)
    if n.value is None:
        return "invalid"
    domain = n.value.rsplit("@", 1)[1]
    if domain in FREE_EMAIL_DOMAINS:
        return "free"
    if domain.endswith(".edu") or ".edu." in domain:
        return "edu"
    return "corporate"


# ---- free text: no raw identifier survives the door -----------------------------------------
# Free-text request fields (campaign, landing page, event URL, city) are not identifiers, but
# clients put identifiers into them (``/pay?phone=…&email=…``). They are scrubbed where they
# enter (the request schemas' validators), before anything stores, logs or echoes them.
PLACEHOLDER_PHONE = "[phone]"
PLACEHOLDER_EMAIL = "[email]"
PLACEHOLDER_WECHAT = "[wechat]"
MIN_PHONE_DIGITS = 9
"""Digit runs with at least this many digits (separators and a leading + allowed) are taken
for phone numbers (mainland mobiles have 11, landlines with area code 10-12); shorter ones
(years, dates like 2026-11-22, sizes) stay."""

_FREE_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+(?:@|%40|＠)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_FREE_DIGITS = re.compile(r"\+?\d(?:[\s\-.()/]{0,2}\d)+")
# WeChat ids by their look (wxid_…, wx_…) or after a label: "wechat: …", "weixin=…", "vx：…",
# "微信 …" (without ":" or "=", only a token holding a digit, "_" or "-": "wechat campaign" stays)
_FREE_WECHAT = re.compile(
    r"\b(?:wxid|wx)_[A-Za-z0-9_\-]+"
    r"|(?<![A-Za-z])(?P<label>wechat|weixin|vx|wx|微信号?)(?:[\s_\-]?id)?"
    r"(?P<sep>\s*[:：=＝]\s*|\s*)(?P<id>[A-Za-z][A-Za-z0-9_\-]{5,19})\b",
    re.IGNORECASE,
)
_SUSPECT = re.compile(r"\d|@|%40|＠|wx|vx|wechat|weixin|微信", re.IGNORECASE)


def _digits_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return PLACEHOLDER_PHONE if sum(c.isdigit() for c in run) >= MIN_PHONE_DIGITS else run


def _wechat(match: re.Match[str]) -> str:
    token = match.group("id")
    if token is None:
        return PLACEHOLDER_WECHAT
    explicit = match.group("sep").strip() != ""
    short_label = match.group("label").lower() in ("wx", "vx")
    looks_like_id = any(c.isdigit() or c in "_-" for c in token)
    if not (explicit or (looks_like_id and not short_label)):
        return match.group(0)
    return match.group(0)[: match.start("id") - match.start(0)] + PLACEHOLDER_WECHAT


@functools.lru_cache(maxsize=16_384)
def scrub_text(text: str) -> str:
    """``text`` with e-mail addresses, phone-like digit runs and WeChat-id-like tokens replaced
    by ``[email]``, ``[phone]``, ``[wechat]``; other text unchanged (remembered per value:
    campaigns and pages repeat)."""
    if not _SUSPECT.search(text):
        return text
    text = _FREE_EMAIL.sub(PLACEHOLDER_EMAIL, text)
    text = _FREE_WECHAT.sub(_wechat, text)
    return _FREE_DIGITS.sub(_digits_run, text)


@functools.lru_cache(maxsize=16_384)
def scrub_url(url: str) -> str:
    """A URL or path without its query string and fragment (where forms and trackers put
    identifiers and tokens), and user info of its host dropped, then ``scrub_text``: the page
    stays (``/pricing?phone=…`` → ``/pricing``), identifiers in the path are replaced."""
    cut = len(url)
    for mark in ("?", "#"):
        at = url.find(mark)
        if at != -1:
            cut = min(cut, at)
    url = url[:cut]
    scheme, sep, rest = url.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        url = f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"
    return scrub_text(url)


# ---- masked forms: what a person may be shown (portrait), made at the door beside the hash ----
MASK = "****"


def mask_value(id_type: str, normalised_value: str) -> str:
    """The display form of a normalised identifier: enough to recognise, not to contact.

    Phone ``13800138000`` → ``138****8000``; e-mail ``alice@example.com`` → ``a***@example.com``;
    WeChat id ``wx_abc123`` → ``w***3``; cookie id → its first 4 characters and ``***``.
    """
    if id_type == "phone":
        return normalised_value[:3] + MASK + normalised_value[-4:]
    if id_type == "email":
        local, _, domain = normalised_value.partition("@")
        return f"{local[:1]}***@{domain}"
    if id_type == "wechat":
        return f"{normalised_value[:1]}***{normalised_value[-1:]}"
    if id_type == "cookie":
        return f"{normalised_value[:4]}***"
    raise ValueError(f"unknown identifier type {id_type!r}; expected one of {ID_TYPES}")


def hash_and_mask(id_type: str, raw: object, salt: str
                  ) -> tuple[str | None, str | None, str | None]:
    """Normalise one raw identifier once: ``(hash, masked form, None)`` or
    ``(None, None, reason)``. The raw value goes no further than this call."""
    n = normalise(id_type, raw)
    if n.value is None:
        return None, None, n.reason
    return hash_value(id_type, n.value, salt), mask_value(id_type, n.value), None
