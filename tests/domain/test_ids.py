from __future__ import annotations

import pytest

from tally.domain.ids import check_id, is_valid_id
from tally.errors import InvalidId


@pytest.mark.parametrize("good", ["a", "call-1", "acct_9.x:y", "A" * 64])
def test_plain_ids_are_accepted(good: str) -> None:
    assert check_id(good) == good and is_valid_id(good)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "A" * 65,
        "-lead",
        "a|b",
        "a\nb",
        "a b",
        "{tag}",
        "@sys",
        "аlice",
        "ａ",
        "a\u200bb",
        5,
        None,
    ],
)
def test_ids_that_could_break_keys_or_journal_lines_or_fool_a_reader_are_refused(
    bad: object,
) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(InvalidId):
        check_id(bad)
