"""The one CSV reader (conveyor.io) behind HTTP bodies, `conveyor predict` and batch: a row never shifts."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from conveyor.errors import MalformedInput
from conveyor.io import csv_blocks, read_csv, read_table


def strict(text: str) -> pd.DataFrame:
    return read_csv(io.StringIO(text), "body")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x0,x1,x2,x3\n-10,-10,1,1,1,1\n", "body: line 2: expected 4 fields, saw 6"),  # the request
        ("x0,x1,x2,x3\n1,2,3,4\n-10,-10,1,1,1,1\n", "body: line 3: expected 4 fields, saw 6"),
        ("x0,x1,x2,x3\n1,2,3\n", "body: line 2: expected 4 fields, saw 3"),  # pandas pads it with NaN
        ("x0,x1,x2,x3\n1,2,3,4,\n", "body: line 2: expected 4 fields, saw 5"),  # pandas drops it on line 2 only
        ("x0,x1,x2,x3\n1,2,3,4\n1,2,3\n1,2,3,4,5\n", "body: line 3: expected 4 fields, saw 3 (and 1 more bad line)"),
        ('x0,x1\n"a\nb",2\n1,2,3\n', "body: line 4: expected 2 fields, saw 3"),  # lines, not rows, are counted
        ("x0,x1,x0\n1,2,3\n", "body: duplicate column name(s) ['x0'] in the header"),
        ("", "body is empty"),
        ('x0,x1\n"1,2\n', "body: line 2: unterminated quoted field"),
    ],
)
def test_a_bad_line_is_refused_with_its_line_and_counts(text, message):
    with pytest.raises(MalformedInput) as exc:
        strict(text)
    assert str(exc.value) == message


def test_good_csv_parses_as_pandas_does():
    text = 'id,name,x,flag\n1,"Smith, J",1.5,true\n2,"two\nlines",,false\n\n3,"say ""hi""",3,true\n'
    frame = strict(text)
    assert frame["name"].tolist() == ["Smith, J", "two\nlines", 'say "hi"']
    assert frame["x"].isna().tolist() == [False, True, False]  # an empty last-but-one field is a missing value
    assert frame["id"].dtype.kind == "i" and frame["flag"].dtype.kind == "b"
    assert strict("a,b\n1,\n")["b"].isna().all()  # an empty last field is a missing value, not a short line
    assert strict("\ufeffa,b\r\n1,2\r\n").columns.tolist() == ["a", "b"]  # Excel's BOM and CRLF


def test_read_table_refuses_a_shifted_csv_file(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("x0,x1,x2,x3\n1,2,3,4\n-10,-10,1,1,1,1\n")
    with pytest.raises(MalformedInput, match=r"in\.csv: line 3: expected 4 fields, saw 6"):
        read_table(str(path))


def test_blocks_reject_bad_lines_one_by_one_and_keep_the_rest():
    lines = ["id,x0,x1"] + [f"{i},{i}.5,{i * 2}" for i in range(10)]
    lines[3] = "2,2.5"  # row 2: too few
    lines[6] = "5,5.5,10,99"  # row 5: too many
    lines[8] = '7,"7\n.5",14'  # row 7: a quoted line break across the first block boundary (lines 9-10)
    lines[10] = "9,9.5"  # row 9, line 12: too few
    text = "\n".join(lines) + "\n"
    blocks = list(csv_blocks(io.StringIO(text, newline=""), "in.csv", rows=4))
    frame = pd.concat([b.frame for b in blocks])
    bad = [line for b in blocks for line in b.bad]
    assert [(b.row, b.line, b.reason) for b in bad] == [
        (2, 4, "expected 3 fields, saw 2"),
        (5, 7, "expected 3 fields, saw 4"),
        (9, 12, "expected 3 fields, saw 2"),
    ]
    assert bad[0].text == "2,2.5"
    assert frame.index.tolist() == [0, 1, 3, 4, 6, 7, 8]  # rows keep their numbers
    assert frame["id"].tolist() == [0, 1, 3, 4, 6, 7, 8]
    assert frame.loc[7, "x0"] == "7\n.5" and frame.loc[8, "x1"] == 16
    assert [(b.start, b.size) for b in blocks] == [(0, 4), (4, 4), (8, 2)]  # the record stays in one block


def test_blocks_of_a_clean_file_follow_pandas():
    text = "a,b,c\n" + "".join(f"{i},{i / 2},x{i}\n" for i in range(1000))
    blocks = list(csv_blocks(io.StringIO(text), "in.csv", rows=300))
    assert [len(b.frame) for b in blocks] == [300, 300, 300, 100] and not any(b.bad for b in blocks)
    got = pd.concat([b.frame for b in blocks])
    want = pd.read_csv(io.StringIO(text))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)


def test_a_literal_quote_inside_a_plain_field_does_not_swallow_the_file():
    """An odd number of quotes used to mean "a quoted field runs on": `5" pipe` made the rest of a batch file one
    block (one worker, no memory bound)."""
    rows = ["id,item,qty"] + [f"{i},bolt,{i}" for i in range(20)]
    rows[3] = '2,5" pipe,2'
    text = "\n".join(rows) + "\n"
    blocks = list(csv_blocks(io.StringIO(text, newline=""), "in.csv", rows=5))
    assert [(b.start, b.size) for b in blocks] == [(0, 5), (5, 5), (10, 5), (15, 5)]
    frame = pd.concat([b.frame for b in blocks])
    assert frame.loc[2, "item"] == '5" pipe' and not any(b.bad for b in blocks)
    assert strict(text)["item"].tolist() == [r.split(",")[1] for r in rows[1:]]


def test_a_whole_file_is_typed_as_pandas_types_it_not_block_by_block(monkeypatch):
    """`read_csv` checks blocks but parses once: an id column that is numeric in its first block and text later
    stays text ("007", not 7), as pd.read_csv reads it."""
    import conveyor.io

    monkeypatch.setattr(conveyor.io, "BLOCK_LINES", 3)
    text = "id,x\n1,1\n2,2\n3,3\n007,4\nA1,5\n"
    assert strict(text)["id"].tolist() == pd.read_csv(io.StringIO(text))["id"].tolist() == ["1", "2", "3", "007", "A1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a,b,c\r\n1,2,\r\n\r\n3,4,5\r\n6,7",
            "body: line 5: expected 3 fields, saw 2",
        ),  # CRLF, a blank line, no final \n
        ("a,b,c\n1,2,\n\n3,4,5\n6", "body: line 5: expected 3 fields, saw 1"),  # a one-character last line
        ("a,b\n1,\n2\n3,\n", "body: line 3: expected 2 fields, saw 1"),  # empty last fields are fine, a short row not
    ],
)
def test_short_rows_among_empty_last_fields_are_found(text, message):
    """Empty values in the last column send a file to the line check (pandas pads a short row with them)."""
    with pytest.raises(MalformedInput) as exc:
        strict(text)
    assert str(exc.value) == message
