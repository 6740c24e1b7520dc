"""JWT checks as upstream Realtime makes them (docs/protocol.md §8.1), without a clock.

socket.py calls verify() on the connect token and channel.py on each join and
`access_token` refresh; both pass `now` (Unix seconds) and the tenant's KeySet,
built once per tenant config. A failure raises a JwtError from errors.py: its
`reason` goes into a join error reply (docs/protocol.md §3.5), its `connect_text` into the
HTTP 401 body at connect (docs/protocol.md §1.4). expires_in() feeds the expiry timers of
docs/protocol.md §8.4.

PyJWT supplies the signature algorithms and JWK parsing. The token is split and
decoded here rather than by `jwt.decode()`, so that each token is parsed once,
the `Ed25519`/`Ed448` alg names upstream accepts work, HS secrets are used as
raw bytes whatever they look like, and no check reads the clock.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.api_jwk import PyJWK
from jwt.exceptions import PyJWTError

from .errors import CONNECT_ERROR_TEXT, InvalidJWTToken, JwtSignatureError, JwtSignerError, MalformedJWT

__all__ = ["KeySet", "clean_token", "expires_in", "sign", "verify"]

# Texts of docs/protocol.md §1.4 and §3.5.
_MALFORMED = "The token provided is not a valid JWT"
_BAD_SIGNATURE = "Failed to validate JWT signature"
_NO_SIGNER = "Failed to generate JWT signer, check your JWT secret or JWKS configuration"
# {kid} is filled in by _inspect(), as upstream interpolates `inspect(kid)`.
_NO_SIGNER_KID = "Failed to generate JWT signer for key ID (kid) {kid}, check your JWT secret or JWKS configuration"
_EXPIRED_CONNECT = "Token has expired"
_MISSING_CLAIMS = "Fields `role` and `exp` are required in JWT"
_EXP_INVALID = "Token expiration time is invalid"
# exp and iat are rounded to integers, which must lie in [-2**63, 2**63).
# Floats this large are whole numbers, so rounding cannot cross the bounds.
_INT64_MIN: Final = -(2**63)
_INT64_END: Final = 2**63
# docs/protocol.md §1.4: a failed custom claim validator answers the connect with 500 and this text.
_CLAIM_CONNECT = CONNECT_ERROR_TEXT

_DEFAULT_ALGORITHMS: Final = get_default_algorithms()

# Header `alg` -> (JWK `kty` the key must have, algorithm). Every other alg
# (none, PS*, ES256K, ...) has no signer (docs/protocol.md §8.1; RT jwt_verification.ex).
# RFC 8037 always says `EdDSA`; JOSE also names the signer after the curve.
_SIGNERS: Final[dict[str, tuple[str, Algorithm]]] = {
    **{alg: ("oct", _DEFAULT_ALGORITHMS[alg]) for alg in ("HS256", "HS384", "HS512")},
    **{alg: ("RSA", _DEFAULT_ALGORITHMS[alg]) for alg in ("RS256", "RS384", "RS512")},
    **{alg: ("EC", _DEFAULT_ALGORITHMS[alg]) for alg in ("ES256", "ES384", "ES512")},
    **{alg: ("OKP", _DEFAULT_ALGORITHMS["EdDSA"]) for alg in ("EdDSA", "Ed25519", "Ed448")},
}
# The PyJWT algorithm whose from_jwk() parses each asymmetric kty.
_JWK_PARSERS: Final = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
_ED_CURVES: Final = frozenset({"Ed25519", "Ed448"})
_PRIVATE_KEY_TYPES: Final = (RSAPrivateKey, EllipticCurvePrivateKey, Ed25519PrivateKey, Ed448PrivateKey)

# RT channels_authorization.ex clean_token strips `\s` (ASCII whitespace in PCRE).
_WHITESPACE: Final = str.maketrans("", "", " \t\n\r\f\v")
_B64URL_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")

_UNUSABLE: Final = object()  # a JWK that matched alg and kid but cannot be used


def clean_token(token: str) -> str:
    """Return `token` URL-decoded with all whitespace removed (docs/protocol.md §1.4, §8.1).

    verify() already does this; call it only to keep the cleaned text."""
    if "%" in token:
        token = unquote(token)
    return token.translate(_WHITESPACE)


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys one tenant's tokens may be signed with.

    `secret` is the HS secret, used as raw UTF-8 bytes; `jwks` is the tenant's
    `jwt_jwks`, `{"keys": [JWK, ...]}`. The JWKs are parsed once, here, so build
    a KeySet when a tenant's config is loaded and reuse it for every check."""

    secret: str | None = None
    jwks: dict[str, object] | None = None
    # (kty, kid) -> verification key: public key object, HMAC bytes, or _UNUSABLE.
    _by_kid: dict[tuple[str, str], object] = field(init=False, repr=False, compare=False)
    _secret_bytes: bytes | None = field(init=False, repr=False, compare=False)
    _has_jwks: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = self.jwks.get("keys") if isinstance(self.jwks, dict) else None
        by_kid: dict[tuple[str, str], object] = {}
        for jwk in keys if isinstance(keys, list) else ():
            if not isinstance(jwk, dict):
                continue
            kty, kid = jwk.get("kty"), jwk.get("kid")
            if not isinstance(kty, str) or not isinstance(kid, str) or (kty, kid) in by_kid:
                continue  # upstream takes the first JWK with this kty and kid
            if kty == "oct" and not isinstance(jwk.get("k"), str):
                continue  # not a candidate upstream: HS falls back to the secret
            by_kid[kty, kid] = _parse_jwk(jwk)
        object.__setattr__(self, "_by_kid", by_kid)
        object.__setattr__(self, "_has_jwks", isinstance(keys, list))
        object.__setattr__(self, "_secret_bytes", None if self.secret is None else self.secret.encode())

    @classmethod
    def from_config(cls, secret: str | None, jwks: dict[str, object] | str | None) -> KeySet:
        """Build a KeySet from tenant config, where `jwks` may still be JSON text."""
        if isinstance(jwks, str):
            jwks = orjson.loads(jwks) if jwks else None
        return cls(secret=secret, jwks=jwks)

    def _select(self, header: dict[str, Any]) -> tuple[Algorithm, object]:
        """Return the algorithm and key for a token header (RT jwt_verification.ex generate_signer)."""
        alg, kid = header.get("alg"), header.get("kid")
        signer = _SIGNERS.get(alg) if isinstance(alg, str) else None
        if signer is None:
            raise JwtSignerError(_NO_SIGNER, _NO_SIGNER)
        kty, algorithm = signer
        if not isinstance(kid, str) or not self._has_jwks:
            # No kid to look up: only HS can go on, with the secret.
            if kty != "oct" or self._secret_bytes is None:
                raise JwtSignerError(_NO_SIGNER, _NO_SIGNER)
            return algorithm, self._secret_bytes
        key = self._by_kid.get((kty, kid))
        if key is None and kty == "oct":
            # Supabase Auth signs HS256 with a kid but publishes no oct JWK for
            # it: upstream then falls back to the secret.
            key = self._secret_bytes
        if key is None or key is _UNUSABLE:
            text = _NO_SIGNER_KID.format(kid=_inspect(kid))
            raise JwtSignerError(text, text)
        return algorithm, key


def _parse_jwk(jwk: dict[str, Any]) -> object:
    """Return the verification key of one JWK, or _UNUSABLE."""
    kty = jwk["kty"]
    if kty == "oct":
        try:
            return _b64url_decode(jwk["k"].rstrip("="))
        except ValueError:
            return _UNUSABLE
    parser = _JWK_PARSERS.get(kty)
    if parser is None or (kty == "OKP" and jwk.get("crv") not in _ED_CURVES):
        return _UNUSABLE
    try:
        key = PyJWK(jwk, algorithm=parser).key
    except (PyJWTError, ValueError, TypeError, KeyError):
        return _UNUSABLE
    # A JWK may carry the private half too; RSA verification needs the public one.
    return key.public_key() if isinstance(key, _PRIVATE_KEY_TYPES) else key


def _inspect(text: str) -> str:
    """Quote a string as Elixir's inspect/1 does for the common cases."""
    # JSON escaping matches inspect for `"`, `\\`, \n, \t, \r; inspect also escapes `#{`.
    return orjson.dumps(text).decode().replace("#{", "\\#{")


def _b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url, raising ValueError on anything else."""
    if not _B64URL_SEGMENT.fullmatch(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _decode_json_segment(segment: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        raise MalformedJWT(_MALFORMED) from None
    if not isinstance(value, dict):
        raise MalformedJWT(_MALFORMED)
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    """A number that rounds into PostgreSQL's bigint (and orjson's integer) range.

    JSON integers past 64 bits decode as floats; rounded, they would be
    integers orjson cannot encode, and policies cast these claims to bigint."""
    return _is_number(value) and _INT64_MIN <= value < _INT64_END  # type: ignore[operator]


def _round(value: float) -> int:
    """Round half away from zero, as Elixir's round/1 does; integers stay exact."""
    if isinstance(value, int):
        return value
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def verify(
    token: str,
    keys: KeySet,
    *,
    now: float,
    require_role_exp: bool = True,
    claim_validators: dict[str, object] | None = None,
) -> dict[str, Any]:
    """Check a token and return its claims, with a decimal `exp`/`iat` rounded.

    The token is cleaned first (clean_token). Checks run in upstream's order:
    decode header and claims, select the signer, verify the signature,
    validate the claims, then (with `require_role_exp`, as for sockets, joins
    and the tenant REST API) require `role` and `exp`. `claim_validators`
    holds exact-match claims (JWT_CLAIM_VALIDATORS), checked when present.

    Raises:
        MalformedJWT: the header or the claims do not decode to JSON objects.
        JwtSignerError: no key for the header's alg/kid.
        JwtSignatureError: the signature does not verify.
        InvalidJWTToken: expired, invalid `exp`/`iat`, a claim mismatch, or
            missing `role`/`exp`.
    """
    token = clean_token(token)
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedJWT(_MALFORMED)
    header_b64, claims_b64, signature_b64 = parts
    # RT peeks the claims before the header; either failing is token_malformed.
    claims = _decode_json_segment(claims_b64)
    header = _decode_json_segment(header_b64)

    algorithm, key = keys._select(header)

    try:
        signature = _b64url_decode(signature_b64)
        valid = algorithm.verify(f"{header_b64}.{claims_b64}".encode("ascii"), key, signature)
    except (ValueError, TypeError):  # a key that does not fit the alg is a bad signature too
        valid = False
    if not valid:
        raise JwtSignatureError(_BAD_SIGNATURE)

    _validate_claims(claims, now, claim_validators)
    if require_role_exp and ("role" not in claims or "exp" not in claims):
        # RT channels_authorization.ex authorize_conn: checked after verification.
        raise InvalidJWTToken(_MISSING_CLAIMS, _MISSING_CLAIMS)
    return claims


def _validate_claims(claims: dict[str, Any], now: float, validators: dict[str, object] | None) -> None:
    """Apply RT JwtAuthToken's validators (only to claims present), then round exp/iat."""
    if "exp" in claims:
        exp = claims["exp"]
        if not _is_time(exp):
            raise InvalidJWTToken(_EXP_INVALID)
        # Upstream compares the raw exp with Joken.current_time(), whole seconds;
        # for a whole-second exp this is exactly `exp > now`.
        if not exp > math.floor(now):
            raise InvalidJWTToken(f"Token has expired {int(now - exp)} seconds ago", _EXPIRED_CONNECT)
        claims["exp"] = _round(exp)
    if "iat" in claims:
        iat = claims["iat"]
        if not _is_time(iat):
            raise InvalidJWTToken("Invalid claim: iat", _CLAIM_CONNECT)
        claims["iat"] = _round(iat)
    if validators:
        for name, expected in validators.items():
            if name in claims and claims[name] != expected:
                raise InvalidJWTToken(f"Invalid claim: {name}", _CLAIM_CONNECT)


def sign(claims: dict[str, Any], secret: str, alg: str = "HS256", *, kid: str | None = None) -> str:
    """Return an HS-signed JWT of `claims`, keyed by `secret` as raw UTF-8 bytes.

    Used by the `keys` command and by tests; only HS256/384/512 are accepted."""
    signer = _SIGNERS.get(alg)
    if signer is None or signer[0] != "oct":
        raise ValueError(f"sign() supports HS256, HS384 and HS512, not {alg!r}")
    header: dict[str, str] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64url_encode(orjson.dumps(header))}.{_b64url_encode(orjson.dumps(claims))}"
    signature = signer[1].sign(signing_input.encode("ascii"), secret.encode())
    return f"{signing_input}.{_b64url_encode(signature)}"


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def expires_in(claims: dict[str, Any], now: float) -> float | None:
    """Return the seconds from `now` until the token's `exp`, or None without one.

    Negative once expired. Channels re-check the token after
    min(5 min, expires_in) (docs/protocol.md §8.4)."""
    exp = claims.get("exp")
    return float(exp - now) if _is_number(exp) else None
