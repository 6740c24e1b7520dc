"""Tests for realtime_core.jwt: token checks of docs/protocol.md §8.1, texts of docs/protocol.md §1.4 and §3.5."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from realtime_core.errors import InvalidJWTToken, JwtSignatureError, JwtSignerError, MalformedJWT
from realtime_core.jwt import KeySet, clean_token, expires_in, sign, verify

NOW = 1_700_000_000
SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
KEYS = KeySet(secret=SECRET)
CLAIMS = {"role": "authenticated", "exp": NOW + 3600, "sub": "user-1"}

SIGNER_TEXT = "Failed to generate JWT signer, check your JWT secret or JWKS configuration"


def signer_kid_text(kid: str) -> str:
    return f'Failed to generate JWT signer for key ID (kid) "{kid}", check your JWT secret or JWKS configuration'


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: object, claims: object, signature: bytes = b"sig") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def assert_fails(token: str, keys: KeySet, exc_type: type, reason: str, connect_text: str, **kw) -> None:
    with pytest.raises(exc_type) as info:
        verify(token, keys, now=NOW, **kw)
    assert type(info.value) is exc_type
    assert info.value.reason == reason
    assert info.value.connect_text == connect_text


# Keys --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ed448_key() -> ed448.Ed448PrivateKey:
    return ed448.Ed448PrivateKey.generate()


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key, ed_key, ed448_key) -> dict:
    return {
        "keys": [
            {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1"},
            {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1"},
            {**OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True), "kid": "ed-1"},
            {**OKPAlgorithm.to_jwk(ed448_key.public_key(), as_dict=True), "kid": "ed448-1"},
            {"kty": "oct", "kid": "oct-1", "k": b64(b"another-secret-for-the-oct-jwk-32-bytes")},
        ]
    }


@pytest.fixture(scope="module")
def jwks_keys(jwks) -> KeySet:
    return KeySet(secret=SECRET, jwks=jwks)


# clean_token (docs/protocol.md §8.1) ------------------------------------------------------


def test_clean_token_url_decodes_and_strips_whitespace():
    assert clean_token(" a%2Eb\n.c\t d\r\n") == "a.b.cd"


def test_token_with_whitespace_and_url_encoding_verifies():
    token = sign(CLAIMS, SECRET)
    header, claims, signature = token.split(".")
    mangled = f"  {header}%2E{claims[:10]}\n{claims[10:]}.\t{signature} \r\n"
    assert verify(mangled, KEYS, now=NOW) == CLAIMS


# HS with the secret -----------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_token_signed_with_secret_verifies(alg):
    assert verify(sign(CLAIMS, SECRET, alg), KEYS, now=NOW) == CLAIMS


def test_token_signed_by_pyjwt_verifies():
    assert verify(pyjwt.encode(CLAIMS, SECRET, algorithm="HS256"), KEYS, now=NOW) == CLAIMS


def test_secret_is_used_as_raw_bytes_even_when_it_looks_like_a_pem_key():
    secret = "-----BEGIN PUBLIC KEY----- not really a key, just a secret"
    assert verify(sign(CLAIMS, secret), KeySet(secret=secret), now=NOW) == CLAIMS


def test_wrong_secret_is_a_signature_error():
    token = sign(CLAIMS, "some-other-secret-that-is-long-enough-32")
    assert_fails(
        token,
        KEYS,
        JwtSignatureError,
        "JwtSignatureError: Failed to validate JWT signature",
        "Failed to validate JWT signature",
    )


def test_tampered_claims_are_a_signature_error():
    header, _, signature = sign(CLAIMS, SECRET).split(".")
    forged = b64(json.dumps({**CLAIMS, "role": "service_role"}).encode())
    with pytest.raises(JwtSignatureError):
        verify(f"{header}.{forged}.{signature}", KEYS, now=NOW)


def test_undecodable_signature_is_a_signature_error():
    header, claims, _ = sign(CLAIMS, SECRET).split(".")
    with pytest.raises(JwtSignatureError):
        verify(f"{header}.{claims}.not*base64", KEYS, now=NOW)


def test_hs_token_without_a_configured_secret_has_no_signer():
    token = sign(CLAIMS, SECRET)
    assert_fails(token, KeySet(), JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


# Signer selection by alg/kid (docs/protocol.md §8.1) --------------------------------------


def test_alg_none_has_no_signer():
    token = raw_token({"alg": "none", "typ": "JWT"}, CLAIMS, b"")
    assert_fails(token, KEYS, JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


def test_missing_alg_has_no_signer():
    token = raw_token({"typ": "JWT"}, CLAIMS)
    assert_fails(token, KEYS, JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


def test_rs256_selects_the_rsa_jwk_by_kid(rsa_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verify(token, jwks_keys, now=NOW) == CLAIMS


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
def test_other_rs_algs_use_the_same_rsa_jwk(rsa_key, jwks_keys, alg):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm=alg, headers={"kid": "rsa-1"})
    assert verify(token, jwks_keys, now=NOW) == CLAIMS


def test_es256_selects_the_ec_jwk_by_kid(ec_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert verify(token, jwks_keys, now=NOW) == CLAIMS


def test_eddsa_selects_the_ed25519_jwk_by_kid(ed_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, ed_key, algorithm="EdDSA", headers={"kid": "ed-1"})
    assert verify(token, jwks_keys, now=NOW) == CLAIMS


@pytest.mark.parametrize(
    ("alg", "kid", "key_fixture"), [("Ed25519", "ed-1", "ed_key"), ("Ed448", "ed448-1", "ed448_key")]
)
def test_curve_named_alg_selects_the_okp_jwk(request, jwks_keys, alg, kid, key_fixture):
    # JOSE names the signer after the curve; upstream accepts that spelling too.
    key = request.getfixturevalue(key_fixture)
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    claims = b64(json.dumps(CLAIMS).encode())
    signature = key.sign(f"{header}.{claims}".encode())
    assert verify(f"{header}.{claims}.{b64(signature)}", jwks_keys, now=NOW) == CLAIMS


def test_jwk_with_its_private_half_still_verifies(rsa_key):
    keys = KeySet(jwks={"keys": [{**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "rsa-1"}]})
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verify(token, keys, now=NOW) == CLAIMS


def test_rs256_signed_by_another_key_is_a_signature_error(jwks_keys):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode(CLAIMS, other, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(JwtSignatureError):
        verify(token, jwks_keys, now=NOW)


def test_unknown_kid_names_the_kid(rsa_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "19de8c2c"})
    text = signer_kid_text("19de8c2c")
    assert_fails(token, jwks_keys, JwtSignerError, f"JwtSignerError: {text}", text)


def test_kid_of_a_jwk_with_another_kty_is_not_found(rsa_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    text = signer_kid_text("ec-1")
    assert_fails(token, jwks_keys, JwtSignerError, f"JwtSignerError: {text}", text)


def test_rs256_without_kid_has_no_signer(rsa_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256")
    assert_fails(token, jwks_keys, JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


def test_rs256_with_kid_but_no_jwks_configured_has_no_signer(rsa_key):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert_fails(token, KEYS, JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


def test_ps256_has_no_signer(rsa_key, jwks_keys):
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="PS256", headers={"kid": "rsa-1"})
    assert_fails(token, jwks_keys, JwtSignerError, f"JwtSignerError: {SIGNER_TEXT}", SIGNER_TEXT)


def test_okp_jwk_on_a_non_signing_curve_has_no_signer():
    jwk = {"kty": "OKP", "crv": "X25519", "kid": "x-1", "x": b64(b"\x01" * 32)}
    token = raw_token({"alg": "EdDSA", "kid": "x-1"}, CLAIMS)
    text = signer_kid_text("x-1")
    assert_fails(token, KeySet(jwks={"keys": [jwk]}), JwtSignerError, f"JwtSignerError: {text}", text)


def test_hs256_kid_matching_an_oct_jwk_uses_its_k(jwks_keys):
    token = sign(CLAIMS, "another-secret-for-the-oct-jwk-32-bytes", kid="oct-1")
    assert verify(token, jwks_keys, now=NOW) == CLAIMS
    # The oct JWK wins over the secret for its kid.
    with pytest.raises(JwtSignatureError):
        verify(sign(CLAIMS, SECRET, kid="oct-1"), jwks_keys, now=NOW)


def test_hs256_kid_without_an_oct_jwk_falls_back_to_the_secret(jwks_keys):
    assert verify(sign(CLAIMS, SECRET, kid="supabase-auth"), jwks_keys, now=NOW) == CLAIMS


def test_hs256_kid_without_jwk_or_secret_names_the_kid(jwks):
    text = signer_kid_text("supabase-auth")
    token = sign(CLAIMS, SECRET, kid="supabase-auth")
    assert_fails(token, KeySet(jwks=jwks), JwtSignerError, f"JwtSignerError: {text}", text)


def test_oct_jwk_with_undecodable_k_names_the_kid():
    keys = KeySet(secret=SECRET, jwks={"keys": [{"kty": "oct", "kid": "oct-1", "k": "not base64!"}]})
    text = signer_kid_text("oct-1")
    assert_fails(sign(CLAIMS, SECRET, kid="oct-1"), keys, JwtSignerError, f"JwtSignerError: {text}", text)


def test_oct_jwk_without_k_is_skipped_for_the_secret():
    keys = KeySet(secret=SECRET, jwks={"keys": ["junk", {"kty": "oct", "kid": "oct-1"}]})
    assert verify(sign(CLAIMS, SECRET, kid="oct-1"), keys, now=NOW) == CLAIMS


def test_unparseable_rsa_jwk_names_the_kid(rsa_key):
    keys = KeySet(jwks={"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "%%%"}]})
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    text = signer_kid_text("rsa-1")
    assert_fails(token, keys, JwtSignerError, f"JwtSignerError: {text}", text)


def test_first_jwk_with_a_kid_wins(rsa_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    first = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1"}
    second = {**RSAAlgorithm.to_jwk(other.public_key(), as_dict=True), "kid": "rsa-1"}
    keys = KeySet(jwks={"keys": [first, second]})
    assert verify(pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}), keys, now=NOW)
    with pytest.raises(JwtSignatureError):
        verify(pyjwt.encode(CLAIMS, other, algorithm="RS256", headers={"kid": "rsa-1"}), keys, now=NOW)


def test_kid_in_signer_error_is_quoted_like_elixir_inspect(jwks_keys):
    token = raw_token({"alg": "ES256", "kid": 'a"b'}, CLAIMS)
    text = signer_kid_text('a\\"b')
    assert_fails(token, jwks_keys, JwtSignerError, f"JwtSignerError: {text}", text)


def test_keyset_from_config_parses_jwks_json(rsa_key, jwks):
    keys = KeySet.from_config(SECRET, json.dumps(jwks))
    token = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verify(token, keys, now=NOW) == CLAIMS
    assert KeySet.from_config(SECRET, "") == KeySet(secret=SECRET)


# Malformed tokens -------------------------------------------------------------

MALFORMED_REASON = "MalformedJWT: The token provided is not a valid JWT"
MALFORMED_TEXT = "The token provided is not a valid JWT"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9", id="two-segments"),
        pytest.param("a.b.c.d.e", id="five-segments"),
        pytest.param("e*J.eyJyb2xlIjoiYW5vbiJ9.c2ln", id="bad-base64-header"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlI.c2ln", id="truncated-claims"),
        pytest.param(f"{b64(b'not json')}.{b64(b'{}')}.c2ln", id="header-not-json"),
        pytest.param(f"{b64(b'[1]')}.{b64(b'{}')}.c2ln", id="header-not-object"),
        pytest.param(f"{b64(b'{}')}.{b64(b'42')}.c2ln", id="claims-not-object"),
    ],
)
def test_undecodable_token_is_malformed(token):
    assert_fails(token, KEYS, MalformedJWT, MALFORMED_REASON, MALFORMED_TEXT)


def test_malformed_is_reported_before_signer_selection():
    # alg none would be a signer error, but the claims fail to decode first.
    token = f"{b64(json.dumps({'alg': 'none'}).encode())}.!!.x"
    assert_fails(token, KEYS, MalformedJWT, MALFORMED_REASON, MALFORMED_TEXT)


# Claims (docs/protocol.md §8.1, §8.4) -------------------------------------------------------

REQUIRED_TEXT = "Fields `role` and `exp` are required in JWT"


def test_missing_role_is_rejected():
    token = sign({"exp": NOW + 60}, SECRET)
    assert_fails(token, KEYS, InvalidJWTToken, f"InvalidJWTToken: {REQUIRED_TEXT}", REQUIRED_TEXT)


def test_missing_exp_is_rejected():
    token = sign({"role": "anon"}, SECRET)
    assert_fails(token, KEYS, InvalidJWTToken, f"InvalidJWTToken: {REQUIRED_TEXT}", REQUIRED_TEXT)


def test_without_require_role_exp_a_token_lacking_them_is_accepted():
    assert verify(sign({"sub": "x"}, SECRET), KEYS, now=NOW, require_role_exp=False) == {"sub": "x"}
    assert verify(sign({"exp": NOW + 1}, SECRET), KEYS, now=NOW, require_role_exp=False) == {"exp": NOW + 1}


def test_expired_token_reports_seconds_since_expiry():
    token = sign({"role": "anon", "exp": NOW - 42}, SECRET)
    assert_fails(
        token,
        KEYS,
        InvalidJWTToken,
        "InvalidJWTToken: Token has expired 42 seconds ago",
        "Token has expired",
    )


def test_token_expiring_at_now_is_expired():
    token = sign({"role": "anon", "exp": NOW}, SECRET)
    assert_fails(token, KEYS, InvalidJWTToken, "InvalidJWTToken: Token has expired 0 seconds ago", "Token has expired")


def test_expiry_is_checked_against_the_now_passed_in():
    token = sign({"role": "anon", "exp": NOW + 10}, SECRET)
    assert verify(token, KEYS, now=NOW + 9.5)["exp"] == NOW + 10
    with pytest.raises(InvalidJWTToken, match="Token has expired 5 seconds ago"):
        verify(token, KEYS, now=NOW + 15.7)


def test_expiry_is_checked_even_without_require_role_exp():
    token = sign({"exp": NOW - 3}, SECRET)
    with pytest.raises(InvalidJWTToken, match="Token has expired 3 seconds ago"):
        verify(token, KEYS, now=NOW, require_role_exp=False)


def test_expired_token_lacking_role_reports_expiry_first():
    token = sign({"exp": NOW - 3}, SECRET)
    with pytest.raises(InvalidJWTToken, match="Token has expired 3 seconds ago"):
        verify(token, KEYS, now=NOW)


def test_decimal_exp_and_iat_are_rounded():
    token = sign({"role": "anon", "exp": NOW + 10.5, "iat": NOW - 0.4}, SECRET)
    claims = verify(token, KEYS, now=NOW)
    assert claims["exp"] == NOW + 11 and type(claims["exp"]) is int
    assert claims["iat"] == NOW and type(claims["iat"]) is int


def test_decimal_exp_in_the_past_is_expired():
    token = sign({"role": "anon", "exp": NOW - 2.6}, SECRET)
    with pytest.raises(InvalidJWTToken, match="Token has expired 2 seconds ago"):
        verify(token, KEYS, now=NOW)


@pytest.mark.parametrize("exp", ["soon", None, True, [1]])
def test_non_numeric_exp_is_invalid(exp):
    token = sign({"role": "anon", "exp": exp}, SECRET)
    assert_fails(
        token,
        KEYS,
        InvalidJWTToken,
        "InvalidJWTToken: Token expiration time is invalid",
        "The token provided is not a valid JWT",
    )


def test_non_numeric_iat_is_an_invalid_claim():
    token = sign({**CLAIMS, "iat": "yesterday"}, SECRET)
    assert_fails(token, KEYS, InvalidJWTToken, "InvalidJWTToken: Invalid claim: iat", "Error connecting to Realtime")


def json_token(claims_json: str) -> str:
    """An HS256 token whose claims are exactly `claims_json` (numbers orjson and PyJWT would rewrite)."""
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{b64(claims_json.encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize("exp", ["1e308", str(2**70), str(2**63), "18446744073709551615", str(-(2**64)), "-1e308"])
def test_exp_beyond_the_bigint_range_is_invalid(exp):
    assert_fails(
        json_token(f'{{"role": "anon", "exp": {exp}}}'),
        KEYS,
        InvalidJWTToken,
        "InvalidJWTToken: Token expiration time is invalid",
        "The token provided is not a valid JWT",
    )


@pytest.mark.parametrize("iat", ["1e308", str(2**70), str(2**63), str(-(2**64))])
def test_iat_beyond_the_bigint_range_is_an_invalid_claim(iat):
    token = json_token(f'{{"role": "anon", "exp": {NOW + 60}, "iat": {iat}}}')
    assert_fails(token, KEYS, InvalidJWTToken, "InvalidJWTToken: Invalid claim: iat", "Error connecting to Realtime")


def test_exp_and_iat_at_the_bigint_bounds_are_accepted_and_encode():
    claims = verify(json_token(f'{{"role": "anon", "exp": {2**63 - 1}, "iat": {-(2**63)}}}'), KEYS, now=NOW)
    assert (claims["exp"], claims["iat"]) == (2**63 - 1, -(2**63))
    assert orjson.loads(orjson.dumps(claims)) == claims


@pytest.mark.parametrize("nbf", ["1e308", str(2**70), str(-(2**70))])
def test_nbf_is_not_validated_and_any_nbf_encodes(nbf):
    # Upstream's JwtAuthToken validates exp and iat only; nbf passes through to policies as sent.
    claims = verify(json_token(f'{{"role": "anon", "exp": {NOW + 60}, "nbf": {nbf}}}'), KEYS, now=NOW)
    assert claims["nbf"] == float(nbf)
    orjson.dumps(claims)


_JSON_NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@settings(max_examples=300, deadline=None)
@given(exp=_JSON_NUMBERS, iat=_JSON_NUMBERS, nbf=_JSON_NUMBERS)
def test_verified_claims_always_encode_for_postgresql(exp, iat, nbf):
    """Whatever numbers a signed token carries, verify() refuses it or returns claims that
    orjson encodes and whose exp/iat fit a bigint (policies cast them)."""
    token = json_token(f'{{"role": "anon", "exp": {exp}, "iat": {iat}, "nbf": {nbf}}}')
    try:
        claims = verify(token, KEYS, now=NOW)
    except InvalidJWTToken:
        return
    orjson.dumps(claims)
    for name in ("exp", "iat"):
        assert type(claims[name]) is int and -(2**63) <= claims[name] < 2**63, claims


def test_claim_validator_match_is_accepted():
    token = sign({**CLAIMS, "iss": "supabase"}, SECRET)
    assert verify(token, KEYS, now=NOW, claim_validators={"iss": "supabase"})["iss"] == "supabase"


def test_claim_validator_mismatch_is_rejected():
    token = sign({**CLAIMS, "iss": "someone-else"}, SECRET)
    assert_fails(
        token,
        KEYS,
        InvalidJWTToken,
        "InvalidJWTToken: Invalid claim: iss",
        "Error connecting to Realtime",
        claim_validators={"iss": "supabase"},
    )


def test_claim_validator_skips_a_claim_the_token_lacks():
    # Joken validates only the claims present; upstream requires none but role/exp.
    assert verify(sign(CLAIMS, SECRET), KEYS, now=NOW, claim_validators={"iss": "supabase"}) == CLAIMS


def test_signature_is_checked_before_claims():
    token = sign({"exp": NOW - 100}, "some-other-secret-that-is-long-enough-32")
    with pytest.raises(JwtSignatureError):
        verify(token, KEYS, now=NOW)


# sign / expires_in ------------------------------------------------------------


def test_sign_writes_a_standard_hs_token():
    token = sign(CLAIMS, SECRET, "HS384", kid="k1")
    assert pyjwt.get_unverified_header(token) == {"alg": "HS384", "typ": "JWT", "kid": "k1"}
    assert pyjwt.decode(token, SECRET, algorithms=["HS384"], options={"verify_exp": False}) == CLAIMS


def test_sign_refuses_non_hs_algs():
    with pytest.raises(ValueError, match="RS256"):
        sign(CLAIMS, SECRET, "RS256")


def test_expires_in_counts_seconds_until_exp():
    assert expires_in({"exp": NOW + 90}, NOW + 0.5) == 89.5
    assert expires_in({"exp": NOW - 5}, NOW) == -5.0
    assert expires_in({"role": "anon"}, NOW) is None
    assert expires_in({"exp": "later"}, NOW) is None
