"""Masking a byte stream cut into lines (tako_core/mask.py): multi-line values, cuts, chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tako_core.mask import ChunkMasker, LineSplitter, Masker

SECRET = "hunter2-hunter2"
PEM = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----\n"


def split(data: bytes, masker: Masker, limit: int, chunk: int) -> list[str]:
    splitter = LineSplitter(masker, limit)
    out: list[str] = []
    for i in range(0, len(data), chunk):
        out += splitter.feed(data[i : i + chunk])
    return out + splitter.close()


def test_each_line_of_a_multi_line_value_is_masked() -> None:
    masker = Masker([PEM])
    assert masker("key line MIIEvQIBADANBgkqhkiG9w0B here") == "key line *** here"
    assert masker(f"whole: {PEM}") == "whole: ***"
    assert "MIIEvQ" not in "".join(split(PEM.encode() * 2, masker, 16, 3))


@given(
    before=st.integers(min_value=0, max_value=80),
    limit=st.integers(min_value=1, max_value=40),
    chunk=st.integers(min_value=1, max_value=50),
)
def test_a_secret_is_masked_wherever_the_cuts_and_reads_fall(before: int, limit: int, chunk: int) -> None:
    data = b"x" * before + SECRET.encode() + b"y" * 7 + b"\nnext " + SECRET.encode() + b"\n"
    lines = split(data, Masker([SECRET]), limit, chunk)
    assert "hunter" not in "".join(lines)
    assert "".join(lines) == "x" * before + "***" + "y" * 7 + "next ***"
    # Pieces stay near the limit: at most a secret's length over it.
    assert all(len(line.encode()) <= limit + len(SECRET) for line in lines)


def test_without_secrets_lines_are_cut_at_the_limit() -> None:
    assert split(b"abcdefg\r\nh", Masker(), 3, 2) == ["abc", "def", "g", "h"]


def through_chunks(data: bytes, masker: Masker, chunk: int) -> list[str]:
    stream = ChunkMasker(masker)
    out = [stream.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return [*out, stream.close()]


@given(
    before=st.integers(min_value=0, max_value=40),
    chunk=st.integers(min_value=1, max_value=50),
)
def test_a_terminal_stream_is_masked_wherever_the_reads_fall(before: int, chunk: int) -> None:
    # Two secrets where one's end begins the other, and a multi-byte character beside them.
    masker = Masker([SECRET, "er2-zzzz"])
    text = "é" * before + SECRET + "-y $ hunter2-zzzz ok " + SECRET
    out = through_chunks(text.encode(), masker, chunk)
    assert "".join(out) == masker(text) == "é" * before + "***-y $ hunt*** ok ***"


def test_a_terminal_stream_holds_back_only_what_may_begin_a_secret() -> None:
    stream = ChunkMasker(Masker([SECRET]))
    assert stream.feed(b"prompt $ ") == "prompt $ "  # nothing held: a prompt shows at once
    assert stream.feed(b"echo hunt") == "echo "  # "hunt" may begin the secret
    assert stream.feed(b"ing\r\n") == "hunting\r\n"
    assert stream.feed(b"hunter2-") == ""
    assert stream.feed(b"hunter2 and") == "*** and"
    assert stream.feed(b" hunter") == " "
    assert stream.close() == "hunter"
