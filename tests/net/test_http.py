"""Tests for realtime_core.net.http: request and response values, and the route table.

The protocol that parses requests and writes responses is tested in test_server.py."""

from __future__ import annotations

import orjson
import pytest

from realtime_core.net.http import Request, Response, Router, json_response


def request(path: str = "/", query_string: str = "") -> Request:
    return Request(method="GET", path=path, query_string=query_string, headers={})


def head_lines(response: Response, keep_alive: bool = True) -> list[str]:
    head = response.head(keep_alive)
    assert head.endswith(b"\r\n\r\n"), "the head ends with a blank line"
    return head[:-4].decode("latin-1").split("\r\n")


async def handler_a(request: Request) -> Response:
    return Response(200, b"a")


async def handler_b(request: Request) -> Response:
    return Response(200, b"b")


class TestRequest:
    def test_query_takes_the_first_value_of_each_name(self):
        assert request(query_string="apikey=k&vsn=2.0.0&vsn=1.0.0").query == {"apikey": "k", "vsn": "2.0.0"}

    def test_query_keeps_blank_values(self):
        assert request(query_string="apikey=&log_level=info").query == {"apikey": "", "log_level": "info"}

    def test_query_decodes_percent_escapes(self):
        assert request(query_string="apikey=a%20b%2Bc").query == {"apikey": "a b+c"}

    def test_no_query(self):
        assert request().query == {}

    def test_the_query_is_parsed_once(self):
        req = request(query_string="a=1")
        assert req.query is req.query


class TestResponse:
    def test_status_line_content_length_and_type(self):
        lines = head_lines(Response(200, b"ok", content_type="text/plain"))
        assert lines == ["HTTP/1.1 200 OK", "content-type: text/plain", "content-length: 2"]

    def test_an_empty_body_has_content_length_zero(self):
        assert head_lines(Response(200)) == ["HTTP/1.1 200 OK", "content-length: 0"]

    def test_a_204_has_no_content_length(self):
        """RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 (the CORS preflight answer)."""
        lines = head_lines(Response(204, headers=[("access-control-allow-origin", "*")]))
        assert lines == ["HTTP/1.1 204 No Content", "access-control-allow-origin: *"]

    def test_extra_headers_follow_in_order(self):
        lines = head_lines(Response(200, headers=[("x-a", "1"), ("x-b", "2")]))
        assert lines[-2:] == ["x-a: 1", "x-b: 2"]

    def test_a_closing_response_says_so(self):
        assert head_lines(Response(400), keep_alive=False)[-1] == "connection: close"

    def test_a_keep_alive_response_has_no_connection_header(self):
        assert not any(line.startswith("connection:") for line in head_lines(Response(200)))

    @pytest.mark.parametrize(
        ("status", "line"),
        [
            (404, "HTTP/1.1 404 Not Found"),
            (413, "HTTP/1.1 413 Request Entity Too Large"),
            (429, "HTTP/1.1 429 Too Many Requests"),
        ],
    )
    def test_reason_phrases(self, status, line):
        assert head_lines(Response(status))[0] == line

    def test_an_unknown_status_has_a_placeholder_reason(self):
        assert head_lines(Response(599))[0] == "HTTP/1.1 599 Unknown"

    def test_content_length_counts_bytes_not_characters(self):
        body = "é".encode()
        assert f"content-length: {len(body)}" in head_lines(Response(200, body))


class TestJsonResponse:
    def test_body_and_content_type(self):
        response = json_response(401, {"error": "API key is missing"})
        assert response.status == 401
        assert orjson.loads(response.body) == {"error": "API key is missing"}
        assert response.content_type == "application/json; charset=utf-8"

    def test_headers(self):
        assert json_response(200, {}, [("x-a", "1")]).headers == [("x-a", "1")]


class TestRouter:
    def test_a_static_path(self):
        router = Router()
        router.add("GET", "/healthcheck", handler_a)
        assert router.match("GET", "/healthcheck") == (handler_a, {}, True)

    def test_pattern_segments_become_params(self):
        router = Router()
        router.add("POST", "/api/broadcast/:topic/events/:event", handler_a)
        assert router.match("POST", "/api/broadcast/room-1/events/cursor") == (
            handler_a,
            {"topic": "room-1", "event": "cursor"},
            True,
        )

    def test_allowed_lists_the_methods_of_a_path(self):
        router = Router()
        router.add("GET", "/tenants/:id", handler_a)
        router.add("DELETE", "/tenants/:id", handler_a)
        router.add("POST", "/tenants", handler_a)
        assert router.allowed("/tenants/a") == ["DELETE", "GET", "HEAD"]
        assert router.allowed("/nowhere") == []

    def test_a_param_does_not_span_slashes(self):
        router = Router()
        router.add("GET", "/tenants/:id", handler_a)
        assert router.match("GET", "/tenants/a/b") == (None, {}, False)

    def test_a_param_is_not_empty(self):
        router = Router()
        router.add("GET", "/tenants/:id", handler_a)
        assert router.match("GET", "/tenants/") == (None, {}, False)

    def test_params_are_left_percent_encoded(self):
        router = Router()
        router.add("GET", "/t/:topic", handler_a)
        assert router.match("GET", "/t/a%3Ab")[1] == {"topic": "a%3Ab"}

    def test_the_whole_path_must_match(self):
        router = Router()
        router.add("GET", "/api/ping", handler_a)
        assert router.match("GET", "/api/ping/extra")[0] is None
        assert router.match("GET", "/prefix/api/ping")[0] is None

    def test_an_unknown_path(self):
        router = Router()
        router.add("GET", "/a", handler_a)
        assert router.match("GET", "/b") == (None, {}, False)

    def test_a_known_path_with_another_method_is_not_allowed(self):
        router = Router()
        router.add("GET", "/a", handler_a)
        assert router.match("POST", "/a") == (None, {}, True)

    def test_the_same_path_routes_by_method(self):
        router = Router()
        router.add("POST", "/api/broadcast", handler_a)
        router.add("OPTIONS", "/api/broadcast", handler_b)
        assert router.match("OPTIONS", "/api/broadcast")[0] is handler_b
        assert router.match("POST", "/api/broadcast")[0] is handler_a

    def test_the_first_matching_route_wins(self):
        router = Router()
        router.add("GET", "/t/special", handler_a)
        router.add("GET", "/t/:name", handler_b)
        assert router.match("GET", "/t/special")[0] is handler_a
        assert router.match("GET", "/t/other") == (handler_b, {"name": "other"}, True)
