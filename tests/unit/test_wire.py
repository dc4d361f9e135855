"""Parsing and validating client frames: a pure function."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatserver import wire
from chatserver.wire import MAX_DEPTH, Refusal, Request, Unreadable, parse_binary, parse_request


def test_a_well_formed_request():
    assert parse_request(b'{"type": "create", "data": {"to": "bob"}, "id": 3}') == Request(
        3, "create", {"to": "bob"}
    )


def test_missing_data_is_an_empty_object():
    assert parse_request(b'{"type": "serverInfo", "id": "a"}') == Request("a", "serverInfo", {})


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1]", b'"x"', b"{", b"[" * 5000, b'{"a": 1'], ids=repr
)
def test_what_is_not_a_json_object_is_unreadable(payload):
    assert type(parse_request(payload)) is Unreadable


@pytest.mark.parametrize(
    "request_id",
    [b"null", b"[1]", b"{}", b"true", b"1.5", b'"' + b"x" * 129 + b'"', b"9007199254740992"],
)
def test_an_unusable_id_is_refused_with_a_null_id(request_id):
    result = parse_request(b'{"type": "create", "id": ' + request_id + b"}")
    assert result == Refusal(None, "invalidId", result.message)


@pytest.mark.parametrize(
    "value",
    [
        b'"\\ud800"',
        b'"a\\udfff"',
        b"NaN",
        b"-Infinity",
        b"9007199254740992",
        b"-9007199254740992",
        b"123456789012345678901234567890",
        b"1e300",
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH,
    ],
    ids=[
        "lone-high-surrogate",
        "lone-low-surrogate",
        "nan",
        "infinity",
        "2**53",
        "-2**53",
        "beyond-64-bits",
        "1e300",
        "deep-list",
        "deep-object",
    ],
)
def test_unsafe_json_is_refused_by_id(value):
    payload = b'{"type": "create", "id": 7, "data": {"x": ' + value + b"}}"
    assert parse_request(payload) == Refusal(7, "invalidRequest", wire.UNSAFE_JSON)


@pytest.mark.parametrize(
    "value",
    [b"9007199254740991", b"-9007199254740991", b"1.5e10", b"1e-300", b'"1234567890123456789"'],
)
def test_numbers_a_javascript_client_can_hold_are_fine(value):
    payload = b'{"type": "create", "id": 7, "data": {"x": ' + value + b"}}"
    assert type(parse_request(payload)) is Request


def test_nesting_up_to_the_limit_is_fine():
    depth = MAX_DEPTH - 2  # the request object and "data" are two levels
    value = b"[" * depth + b"]" * depth
    assert type(parse_request(b'{"type": "a", "id": 1, "data": ' + value + b"}")) is Request


def test_a_lone_surrogate_in_the_id_itself_gets_a_null_id():
    result = parse_request(b'{"type": "create", "id": "\\ud800"}')
    assert result.id is None and result.code == "invalidId"


def test_size_and_type_are_checked():
    payload = b'{"type": "create", "id": 1, "data": "' + b"x" * 100 + b'"}'
    assert parse_request(payload, max_bytes=50).code == "tooLarge"
    assert parse_request(b'{"type": "", "id": 1}').code == "invalidRequest"
    assert parse_request(b'{"type": 5, "id": 1}').code == "invalidRequest"


def test_binary_frames():
    assert parse_binary(b'{"id": 4}') == Refusal(
        4, "invalidRequest", "binary frames are not supported"
    )
    assert type(parse_binary(b"\x00\xff")) is Unreadable


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.one_of(st.integers(), st.text(max_size=200), st.none()))
def test_any_frame_gets_exactly_one_outcome_and_requests_can_be_answered(data, request_id):
    payload = json.dumps({"type": "x", "id": request_id, "data": data}).encode()
    result = parse_request(payload)
    assert type(result) in (Request, Refusal, Unreadable)
    if type(result) is Request:
        # Whatever passes the edge can be stored and sent back.
        expected = {} if data is None else data
        assert orjson.loads(wire.reply(result.id, result.data)) == {
            "id": result.id,
            "data": expected,
        }
    if type(result) is Refusal:
        wire.error_reply(result.id, result.code, result.message)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(payload):
    assert type(parse_request(payload)) in (Request, Refusal, Unreadable)


@given(
    st.binary(max_size=64) | st.text(alphabet="0123456789eE+-. a٣é", max_size=40).map(str.encode)
)
def test_the_quick_number_check_finds_what_the_pattern_finds(payload):
    assert wire._maybe_big_number(payload) == bool(wire._MAYBE_BIG_NUMBER.search(payload))
