"""The locator finds where keys, values and array elements are written, in every TOML form."""

from __future__ import annotations

import pytest

from tako_core.config.locate import Locator

DOC = """\
# a comment with [envs.fake] and key = "x"
name = "shop"   # trailing
text = \"\"\"
[envs.inside]
release = "not a key"
\"\"\"
lit = '''two ''quotes'' '''

[envs.production]
servers = [
  "web-1",  # leader
  "web-2",
]
"relase" = "x"

[envs]
staging.servers = ["a", "b"]
dev = { servers = ["c"], release = "y" }

[[arr]]
k = 1
"""


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        (("name",), (2, 1), (2, 8)),
        (("text",), (3, 1), (3, 8)),
        (("lit",), (7, 1), (7, 7)),
        (("envs",), (9, 2), (9, 2)),
        (("envs", "production"), (9, 7), (9, 7)),
        (("envs", "production", "servers"), (10, 1), (10, 11)),
        (("envs", "production", "servers", 0), (11, 3), (11, 3)),
        (("envs", "production", "servers", 1), (12, 3), (12, 3)),
        (("envs", "production", "relase"), (14, 1), (14, 12)),
        (("envs", "staging", "servers"), (17, 9), (17, 19)),
        (("envs", "staging", "servers", 1), (17, 25), (17, 25)),
        (("envs", "dev", "release"), (18, 26), (18, 36)),
        (("envs", "dev", "servers", 0), (18, 20), (18, 20)),
        (("arr", "k"), (21, 1), (21, 5)),
    ],
)
def test_positions(path: tuple[str | int, ...], key: tuple[int, int], value: tuple[int, int]) -> None:
    locator = Locator(DOC)
    assert locator.key(path) == key
    assert locator.value(path) == value


def test_strings_that_look_like_tables_are_not_indexed() -> None:
    locator = Locator(DOC)
    # "[envs.inside]" sits in a multi-line string: the nearest real ancestor is [envs.production]'s "envs".
    assert locator.key(("envs", "inside", "release")) == (9, 2)


def test_missing_keys_fall_back_to_the_nearest_ancestor() -> None:
    locator = Locator(DOC)
    assert locator.key(("envs", "production", "instances")) == (9, 7)
    assert locator.value(("envs", "production", "servers", 7)) == (10, 1)
    assert locator.key(("nothing", "here")) == (1, 1)


def test_quoted_keys_are_decoded() -> None:
    locator = Locator("[envs.\"pro\\u0064\"]\n'a.b' = 1\n")
    assert locator.key(("envs", "prod")) == (1, 7)
    assert locator.key(("envs", "prod", "a.b")) == (2, 1)


def test_text_it_cannot_follow_keeps_what_came_before() -> None:
    locator = Locator('a = 1\nb = "unterminated\nc = 3\n')
    assert locator.value(("a",)) == (1, 5)
    assert locator.key(("c",)) == (1, 1)


def test_crlf_and_tabs() -> None:
    locator = Locator("a = 1\r\n[t]\r\n\tb\t=\t2\r\n")
    assert locator.key(("t", "b")) == (3, 2)
    assert locator.value(("t", "b")) == (3, 6)


@pytest.mark.parametrize(
    ("text", "path", "span"),
    [
        ("a = 1\n[t]\nb = 2\n\n[u]\nc = 3\n", ("t",), (2, 5)),
        ("a = 1\n[t]\nb = 2\n\n[u]\nc = 3\n", ("u",), (5, 8)),  # the last one ends past the last line
        ("[s.t]\nb = 2\n[[x]]\n", ("s", "t"), (1, 3)),
        ("[t]\nb = 2\n[t.sub]\nc = 3\n", ("t",), None),  # a sub-table: not one section
        ("t.b = 1\n[u]\n", ("t",), None),  # dotted keys, no header
        ("[t]\nb = 2\n[u]\n[t.c]\n", ("t",), None),  # reopened further down
        ("[s]\nt = { b = 1 }\n", ("s", "t"), None),  # inline
        ("[t]\nb = 'unterminated\n", ("t",), None),  # the scanner gave up: never guess
    ],
)
def test_sections(text: str, path: tuple[str, ...], span: tuple[int, int] | None) -> None:
    assert Locator(text).section(path) == span
