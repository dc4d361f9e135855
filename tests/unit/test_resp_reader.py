"""The cluster's Redis reply reader reads what hiredis reads, byte by byte or
all at once."""

from __future__ import annotations

import pytest
import txredisapi

from chatserver.cluster import RespReader

REPLIES = (
    b"*3\r\n$7\r\nmessage\r\n$9\r\nchat:to:1\r\n$11\r\nab\r\ncd\nef\r\n\r\n"  # CR LF inside
    b":12\r\n"
    b":-3\r\n"
    b"+OK\r\n"
    b"-NOSCRIPT No matching script\r\n"
    b"$-1\r\n"
    b"$0\r\n\r\n"
    b"*-1\r\n"
    b"*2\r\n*1\r\n$1\r\nx\r\n*0\r\n"
)
EXPECTED = [
    [b"message", b"chat:to:1", b"ab\r\ncd\nef\r\n"],
    12,
    -3,
    b"OK",
    "NOSCRIPT No matching script",
    None,
    b"",
    None,
    [[b"x"], []],
]


def read_all(reader: object, data: bytes, step: int) -> list[object]:
    out = []
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        while (reply := reader.gets()) is not False:
            out.append(str(reply) if isinstance(reply, txredisapi.ResponseError) else reply)
    return out


@pytest.mark.parametrize("step", [1, 2, 7, len(REPLIES)])
def test_every_reply_is_read_however_the_bytes_arrive(step):
    reader = RespReader()
    assert read_all(reader, REPLIES, step) == EXPECTED
    assert reader.gets() is False


def test_errors_are_returned_not_raised():
    reader = RespReader()
    reader.feed(b"-ERR wrong\r\n")
    error = reader.gets()
    assert isinstance(error, txredisapi.ResponseError)
    assert error.args[0] == "ERR wrong"


def test_what_is_not_resp_is_refused():
    reader = RespReader()
    reader.feed(b"hello\r\n")
    with pytest.raises(txredisapi.InvalidData):
        reader.gets()


def test_it_reads_as_hiredis_does():
    hiredis = pytest.importorskip("hiredis")
    theirs = hiredis.Reader(
        protocolError=txredisapi.InvalidData, replyError=txredisapi.ResponseError
    )
    assert read_all(theirs, REPLIES, len(REPLIES)) == EXPECTED
