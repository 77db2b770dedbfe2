import pytest

from leadscore.identifiers import email_domain_type, hash_identifier, normalise

SALT = "test-salt"


@pytest.mark.parametrize(
    "raw", ["+86 138 0013 8000", "13800138000", "0086-138-0013-8000", "(138) 0013-8000 "]
)
def test_phone_formats_hash_alike(raw: str) -> None:
    assert hash_identifier("phone", raw, SALT) == hash_identifier("phone", "13800138000", SALT)


def test_email_case_and_whitespace() -> None:
    a, _ = hash_identifier("email", "  Alice@Example.COM ", SALT)
    b, _ = hash_identifier("email", "alice@example.com", SALT)
    assert a == b and a is not None and a.startswith("email:")


def test_hash_depends_on_salt_and_hides_value() -> None:
    h1, _ = hash_identifier("phone", "13800138000", "s1")
    h2, _ = hash_identifier("phone", "13800138000", "s2")
    assert h1 != h2
    assert "13800138000" not in h1


@pytest.mark.parametrize(
    ("id_type", "raw", "reason"),
    [
        ("phone", "", "empty"),
        ("phone", "12345", "not_a_mobile_number"),
        ("phone", "13888888888", "placeholder_number"),
        ("phone", "abc", "non_digit"),
        ("email", "not-an-email", "malformed_email"),
        ("wechat", "1bad", "malformed_wechat_id"),
        ("cookie", None, "missing"),
        ("cookie", 42, "not_a_string"),
        ("email", "a" * 300, "too_long"),
    ],
)
def test_unusable_identifiers_get_a_reason(id_type: str, raw: object, reason: str) -> None:
    value, why = hash_identifier(id_type, raw, SALT)
    assert value is None and why == reason


def test_unknown_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown identifier type"):
        normalise("fax", "123")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(None, "none"), ("x@qq.com", "free"), ("x@school.edu.cn", "edu"), ("x@acme.cn", "corporate"),
     ("bad", "invalid")],
)
def test_email_domain_type(raw: object, kind: str) -> None:
    assert email_domain_type(raw) == kind


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("winter-math-2026", "winter-math-2026"),  # years and dates stay
        ("promo 2026-11-22", "promo 2026-11-22"),
        ("call +86 139 1234 5678 now", "call [phone] now"),
        ("13977778888", "[phone]"),
        ("mail a.b@qq.com or a.b%40qq.com", "mail [email] or [email]"),
        ("wechat: zhang_san88", "wechat: [wechat]"),
        ("微信 zhangsan_88", "微信 [wechat]"),
        ("from wxid_abc123xyz", "from [wechat]"),
        ("wechat campaign", "wechat campaign"),  # a label without an id-like token stays
        ("Hangzhou", "Hangzhou"),
    ],
)
def test_scrub_text(text: str, scrubbed: str) -> None:
    from leadscore.identifiers import scrub_text

    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    ("url", "scrubbed"),
    [
        ("/pay?phone=13977778888&email=a@b.com", "/pay"),
        ("/trial/math#wxid_abc123", "/trial/math"),
        ("https://user:pw@shop.example.com/u/a@b.com/x?t=1", "https://shop.example.com/u/[email]/x"),
        ("/user/13912345678/profile", "/user/[phone]/profile"),
        ("wechat://article/exam-tips", "wechat://article/exam-tips"),
        ("", ""),
    ],
)
def test_scrub_url(url: str, scrubbed: str) -> None:
    from leadscore.identifiers import scrub_url

    assert scrub_url(url) == scrubbed
