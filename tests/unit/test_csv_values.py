"""Cell parsers: decimal commas, French/ISO dates and datetimes across DST, FR/EN booleans, inference."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from territoire_data.ingest.files import values as v


@pytest.mark.parametrize(
    ("cell", "expected"), [("12,5", 12.5), ("12.5", 12.5), ("-0,25", -0.25), ("3", 3.0), ("1e3", 1000.0)]
)
def test_numbers_with_decimal_point_or_comma(cell: str, expected: float) -> None:
    assert v.parse_number(cell) == expected


@pytest.mark.parametrize("cell", ["1,2,3", "1.2,3", "douze", "1_000", "١٢"])
def test_not_numbers(cell: str) -> None:
    with pytest.raises(ValueError, match="not a number"):
        v.parse_number(cell)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_round_trips_with_a_decimal_comma(value: float) -> None:
    assert v.parse_number(repr(value).replace(".", ",")) == value


def test_integers() -> None:
    assert v.parse_integer("42") == 42
    assert v.parse_integer("-7") == -7
    for bad in ("4.2", "1_000", "", "x"):
        with pytest.raises(ValueError, match="not an integer"):
            v.parse_integer(bad)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("oui", True), ("Non", False), ("true", True), ("False", False), ("TRUE", True), ("1", True), ("0", False),
     ("vrai", True), ("faux", False)],
)  # fmt: skip
def test_booleans_in_french_and_english(cell: str, expected: bool) -> None:
    assert v.parse_boolean(cell) is expected


def test_not_a_boolean() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        v.parse_boolean("peut-être")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("2024-03-31", date(2024, 3, 31)), ("31/03/2024", date(2024, 3, 31)), ("1/2/2024", date(2024, 2, 1)),
     ("31-03-2024", date(2024, 3, 31)), ("31.03.2024", date(2024, 3, 31))],
)  # fmt: skip
def test_french_and_iso_dates(cell: str, expected: date) -> None:
    assert v.parse_date(cell) == expected


def test_invalid_dates_say_why() -> None:
    with pytest.raises(ValueError, match="not a valid date"):
        v.parse_date("30/02/2024")
    with pytest.raises(ValueError, match="datetime, not a date"):
        v.parse_date("2024-03-31T10:00:00")


def test_datetimes_with_offsets_across_dst() -> None:
    winter = v.parse_datetime("2022-03-27T01:00:00+01:00")
    summer = v.parse_datetime("2022-03-27T03:00:00+02:00")
    assert summer - winter == timedelta(hours=1)
    assert v.parse_datetime("2021-09-07T13:15:00Z") == datetime(2021, 9, 7, 13, 15, tzinfo=UTC)
    assert v.parse_datetime("2022-10-18T12:35:49+0000") == datetime(2022, 10, 18, 12, 35, 49, tzinfo=UTC)


def test_naive_datetimes_are_local_time_of_paris_on_both_sides_of_dst() -> None:
    before = v.parse_datetime("26/03/2022 12:00")
    after = v.parse_datetime("27/03/2022 12:00")
    assert before.utcoffset() == timedelta(hours=1)
    assert after.utcoffset() == timedelta(hours=2)
    assert after.astimezone(UTC) - before.astimezone(UTC) == timedelta(hours=23)
    assert v.parse_datetime("2022-07-01 08:30", UTC) == datetime(2022, 7, 1, 8, 30, tzinfo=UTC)


def test_french_datetime_with_seconds_offset_and_h_separator() -> None:
    assert v.parse_datetime("01/07/2022 08h30") == v.parse_datetime("2022-07-01T08:30:00+02:00")
    assert v.parse_datetime("01/07/2022 08:30:15 +02:00") == v.parse_datetime("2022-07-01T08:30:15+02:00")


def test_times_years_durations() -> None:
    assert v.parse_time("14h05") == time(14, 5)
    assert v.parse_time("14:05:30") == time(14, 5, 30)
    assert v.parse_year("2024") == 2024
    assert v.parse_duration("P1DT2H") == "P1DT2H"
    with pytest.raises(ValueError, match="ISO 8601 duration"):
        v.parse_duration("P")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2", "-3"], "integer"),
        (["07005", "75001"], "string"),  # codes keep their leading zero
        (["1,5", "2"], "number"),
        (["12.5", "3"], "number"),
        (["Oui", "non"], "boolean"),
        (["true", "False"], "boolean"),
        (["0", "1"], "integer"),
        (["2024-01-02", "03/01/2024"], "date"),
        (["2022-01-01T00:00:00+01:00", "2022-07-01T00:00:00+02:00"], "datetime"),
        (["48.84,2.30"], "string"),
        ([], "string"),
        (["99999999999999999999"], "string"),
    ],
)
def test_inference(values: list[str], expected: str) -> None:
    assert v.infer_type(values) == expected


def test_the_set_based_paths_whitespace_is_all_of_pythons() -> None:
    """setload scans code points below WHITESPACE_END only (a quick CLI start): none above is whitespace."""
    import sys

    from territoire_data.ingest.files.setload import WHITESPACE, WHITESPACE_END

    assert not [c for c in range(WHITESPACE_END, sys.maxunicode + 1) if chr(c).isspace()]
    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == WHITESPACE


def test_native_cell_shapes_take_no_quote_nor_carriage_return() -> None:
    """parload.NativePart relies on it: a chunk its pattern matches has no quoted cell and no lone CR."""
    import re

    from territoire_data.ingest.files.setload import _NATIVE_SHAPES

    for kind, shape in _NATIVE_SHAPES.items():
        pattern = re.compile(shape)
        for byte in (b'"', b"\r", b"\n"):
            for cell in (byte, b"1" + byte, byte + b"1", b"a" + byte + b"b"):
                assert pattern.fullmatch(cell) is None, (kind, cell)


def test_parallel_split_cuts_at_a_line_end_and_counts_the_first_parts_rows(tmp_path: Path) -> None:
    from territoire_data.ingest.files.parload import split

    path = tmp_path / "f.csv"
    for data, middle in (
        (b"h\n1;a\n2;b\n3;c\n4;d\n", 14),  # the line end after the middle byte
        (b"h\n1;a\n2;b\n3;c\n4;d", 10),  # no final newline
        (b"h\n1;aaaaaaaaaaaa", 16),  # one line, no newline: the first part is the whole file
        (b"h\n", 2),
    ):
        path.write_bytes(data)
        cut = split(path, 1, 0)
        assert cut is not None
        assert (cut.start, cut.middle, cut.end) == (2, middle, len(data))
        assert cut.first_rows == len(data[2:middle].splitlines()), data
    assert split(path, 1, len(data) + 1) is None
    path.write_bytes(b"h")  # a header without its newline
    assert split(path, 1, 0) is None


def test_parallel_part_validates_the_bytes_it_sent(tmp_path: Path) -> None:
    """The pattern is checked after the COPY: on the same bytes (by checksum), else the file is not vouched for."""
    import re
    import threading

    from territoire_data.ingest.files.parload import NativePart
    from territoire_data.ingest.files.setload import NotVouched

    path = tmp_path / "f.csv"
    path.write_bytes(b"1;2,5\n3;4\n")
    native = re.compile(rb"(?:[0-9]+;[0-9,]*\n)*")
    part = NativePart(path, 0, path.stat().st_size, native, b'"')
    assert b"".join(part.chunks()) == b"1;2.5\n3;4\n" and part.rows == 2
    part.validate(threading.Event())
    path.write_bytes(b"1;2,5\n3;5\n")  # changed after it was sent
    with pytest.raises(NotVouched, match="changed"):
        part.validate(threading.Event())
    path.write_bytes(b"1;x,5\n3;4\n")  # a cell the pattern refuses
    with pytest.raises(NotVouched, match="input form"):
        part.validate(threading.Event())
    path.write_bytes(b'1;"2"\n')
    with pytest.raises(NotVouched, match="quotes"):
        list(NativePart(path, 0, path.stat().st_size, native, b'"').chunks())


@pytest.mark.parametrize("chunk", [4, 1 << 20])
def test_line_chunks_cut_at_line_ends_and_stop_at_the_size(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """setload.line_chunks (the set-based, native and parallel paths' reader): whole lines, nothing lost."""
    import io

    from territoire_data.ingest.files import setload

    monkeypatch.setattr(setload, "_CHUNK", chunk)
    for data in (b"", b"1;a\n", b"1;a\n22;bb\n333;ccc", b"a-line-longer-than-a-chunk\nb\n"):
        got = list(setload.line_chunks(io.BytesIO(data)))
        assert b"".join(got) == data
        assert all(c.endswith(b"\n") for c in got[:-1]) and all(got)
        handle = io.BytesIO(b"h\n" + data + b"tail\n")
        handle.seek(2)
        assert b"".join(setload.line_chunks(handle, len(data))) == data
