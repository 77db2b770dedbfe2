"""Who is asking: agent tokens for the portrait, audience and ``/ui`` routes.

The CRM signs, for the logged-in employee, a JSON Web Token (HS256, RFC 7519) with the shared
secret ``LEADSCORE_AGENT_TOKEN_SECRET`` (default: derived from the service's API key, see
``token_secret``) and sends it as ``Authorization: Bearer <token>`` (the ``/ui`` page takes it
from the URL fragment, ``/ui#token=…``, which browsers never send to a server or log):

    {"sub": "E1024", "role": "agent", "team": "east-1", "iat": 1764500000, "exp": 1764528800,
     "aud": "leadscore"}

``sub`` is the employee id (1-64 letters, digits, ``_.-``; it is the page's watermark and the
access log's "who"), ``role`` one of ``agent`` (own persons), ``manager`` (the team's persons)
or ``admin`` (all, and may post assignments), ``team`` the employee's team. A token must be
signed with the secret, carry ``exp`` and ``iat``, be alive (30 s of clock skew allowed), and
live at most ``agent_token_max_hours`` (default 12). The service API key itself is accepted
as the CRM system (role ``admin``, agent id ``crm-system``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt

from crm_data.access import AGENT_ID, ROLES

AUDIENCE = "leadscore"
ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
SYSTEM_AGENT = "crm-system"


class AgentAuthError(Exception):
    """No or a bad credential: ``status`` 401 (none, unreadable, expired) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Agent:
    """The caller of an agent route."""

    agent_id: str
    role: str
    team: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def token_secret(configured: str | None, api_key: str) -> bytes:
    """The signing secret: the configured one, else HMAC-SHA256(API key, "leadscore agent
    token") — so a CRM that holds the API key can sign without a second secret to share."""
    if configured:
        return configured.encode()
    return hmac.new(api_key.encode(), b"leadscore agent token", hashlib.sha256).hexdigest(
    ).encode()


def mint_agent_token(secret: bytes, agent_id: str, role: str, team: str | None,
                     ttl_seconds: int = 3600, now: float | None = None) -> str:
    """A signed agent token (what the CRM does; also ``leadscore agent-token``)."""
    if not AGENT_ID.fullmatch(agent_id):
        raise ValueError("agent id must be 1-64 letters, digits or '_.-'")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if team is not None and not AGENT_ID.fullmatch(team):
        raise ValueError("team must be 1-64 letters, digits or '_.-'")
    issued = int(now if now is not None else time.time())
    claims = {"sub": agent_id, "role": role, "iat": issued, "exp": issued + int(ttl_seconds),
              "aud": AUDIENCE}
    if team is not None:
        claims["team"] = team
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_agent_token(token: str, secret: bytes, max_hours: float) -> Agent:
    """The agent a token stands for; ``AgentAuthError`` says what is wrong (never echoing it)."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                            leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "iat", "sub", "aud"]})
    except jwt.ExpiredSignatureError:
        raise AgentAuthError(401, "agent token expired: ask the CRM for a new one") from None
    except jwt.InvalidSignatureError:
        raise AgentAuthError(403, "agent token not signed with this service's secret") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AgentAuthError(401, f"agent token lacks the '{exc.claim}' claim") from None
    except jwt.InvalidAudienceError:
        raise AgentAuthError(401, f"agent token is not for audience '{AUDIENCE}'") from None
    except jwt.PyJWTError:
        raise AgentAuthError(401, "agent token unreadable: send 'Authorization: Bearer "
                                  "<signed agent token>'") from None
    sub, role, team = claims.get("sub"), claims.get("role"), claims.get("team")
    if not isinstance(sub, str) or not AGENT_ID.fullmatch(sub):
        raise AgentAuthError(401, "agent token claim 'sub' must be 1-64 letters, digits or '_.-'")
    if role not in ROLES:
        raise AgentAuthError(401, f"agent token claim 'role' must be one of {', '.join(ROLES)}")
    if team is not None and (not isinstance(team, str) or not AGENT_ID.fullmatch(team)):
        raise AgentAuthError(401, "agent token claim 'team' must be 1-64 letters, digits or "
                                  "'_.-'")
    if role == "manager" and team is None:
        raise AgentAuthError(401, "a manager's agent token needs the 'team' claim")
    if not isinstance(claims["iat"], int | float) or not isinstance(claims["exp"], int | float) \
            or claims["exp"] - claims["iat"] > max_hours * 3600:
        raise AgentAuthError(401, f"agent token lives longer than {max_hours:g} hours")
    return Agent(sub, role, team)


def authenticate(authorization: str | None, api_key: str, secret: bytes, max_hours: float
                 ) -> Agent:
    """The caller of a request from its ``Authorization`` header value."""
    if not authorization:
        raise AgentAuthError(401, "missing credentials: send 'Authorization: Bearer <agent "
                                  "token>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AgentAuthError(401, "send 'Authorization: Bearer <agent token>'")
    if hmac.compare_digest(token.encode(), api_key.encode()):
        return Agent(SYSTEM_AGENT, "admin", None)
    return verify_agent_token(token, secret, max_hours)
