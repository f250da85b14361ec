"""Dialect detection: encodings, separators, quoting, line endings; property-based over generated tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territoire_data.ingest.files.dialect import NotTextError, detect_delimiter, detect_encoding, sniff
from territoire_data.ingest.files.reader import CsvFormatError, open_csv

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"

# Characters a French file carries, all encodable in cp1252, plus the separators and quotes themselves.
CELL_ALPHABET = st.sampled_from([*list("abcdeéèàçôùœ€ XYZ0123456789-_.'/"), ";", ",", "\t", "|", '"', "\n"])
NAME_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzéèàç_0123456789"))


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    ncols = draw(st.integers(min_value=2, max_value=6))
    header = draw(
        st.lists(st.text(NAME_ALPHABET, min_size=1, max_size=12), min_size=ncols, max_size=ncols, unique=True)
    )
    rows = draw(
        st.lists(
            st.lists(st.text(CELL_ALPHABET, max_size=15), min_size=ncols, max_size=ncols),
            min_size=0,
            max_size=12,
        )
    )
    # A row of only empty cells would be a blank line for one-column writers; keep at least one value.
    rows = [row if any(row) else ["x", *row[1:]] for row in rows]
    return header, rows


def render(header: list[str], rows: list[list[str]], delimiter: str, terminator: str, final_newline: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    return text if final_newline else text.removesuffix(terminator)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=tables(),
    delimiter=st.sampled_from([";", ",", "\t", "|"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]),
    final_newline=st.booleans(),
)
def test_any_generated_file_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    table: tuple[list[str], list[list[str]]],
    delimiter: str,
    terminator: str,
    encoding: str,
    final_newline: bool,
) -> None:
    header, rows = table
    text = render(header, rows, delimiter, terminator, final_newline)
    path = tmp_path_factory.mktemp("dialect") / "f.csv"
    path.write_bytes(text.encode(encoding))
    with open_csv(path) as source:
        assert source.dialect.delimiter == delimiter
        if encoding == "cp1252" and text.isascii():
            assert source.dialect.encoding == "utf-8"  # ASCII is both; nothing is lost
        else:
            assert source.dialect.encoding == encoding
        assert source.header == header
        got = [cells for _, cells in source.records()]
    assert got == rows


@given(st.binary(max_size=200))
def test_encoding_detection_never_fails(data: bytes) -> None:
    """Any bytes get an encoding, or a clear NotTextError (binary content), never another exception."""
    try:
        encoding = detect_encoding(data)
    except NotTextError as exc:
        encoding = "refused: " + str(exc)
    assert encoding in ("utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1") or "file" in encoding


def test_utf8_cut_in_the_middle_of_a_character_is_still_utf8() -> None:
    sample = "hôpital;é".encode()
    assert detect_encoding(sample[:-1]) == "utf-8"
    assert detect_encoding(sample[:-1], complete=True) == "cp1252"


def test_bom_and_cp1252_and_latin1() -> None:
    assert detect_encoding(b"\xef\xbb\xbfa;b\n") == "utf-8-sig"
    assert detect_encoding("é;€\n".encode("cp1252")) == "cp1252"
    assert detect_encoding(b"a;\x81\n") == "latin-1"  # 0x81 is undefined in cp1252


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a;b;c\n1;2,5;3\n", ";"),
        ('a,b,c\n1,"2,5",3\n', ","),
        ("a\tb\n1\t2\n", "\t"),
        ("a|b\n1|2\n", "|"),
        ('TYPE;geo_shape;geo_point_2d\nX;"{""coordinates"": [1, 2]}";48.8,2.3\n', ";"),
        ("single\n1\n2\n", ","),
    ],
)
def test_delimiter(text: str, expected: str) -> None:
    assert detect_delimiter(text, complete=True) == expected


@pytest.mark.parametrize(
    ("name", "delimiter", "columns", "rows"),
    [
        ("paris_sanisettes.csv", ";", 10, 615),
        ("irve_consolidation_extrait.csv", ",", 52, 100),
        ("meteofrance_MN_07_precip_6min.csv", ";", 8, 100),
        ("ecocompteur_loire_site.csv", ",", 8, 3),
        ("ecocompteur_loire_channel.csv", ",", 19, 10),
        ("ecocompteur_loire_measure.csv", ",", 5, 3650),
    ],
)
def test_real_files(name: str, delimiter: str, columns: int, rows: int) -> None:
    with open_csv(FIXTURES / name) as source:
        assert source.dialect.delimiter == delimiter
        assert source.dialect.encoding == "utf-8"
        assert len(source.header) == columns
        records = list(source.records())
    assert len(records) == rows
    assert all(len(cells) == columns for _, cells in records)
    assert records[0][0] == 2
    assert records[-1][0] == rows + 1


def test_line_numbers_count_physical_lines_of_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('a;b\n1;"deux\nlignes"\n3;4\n', encoding="utf-8")
    with open_csv(path) as source:
        assert [line for line, _ in source.records()] == [2, 4]


def test_sniff_of_a_bom_file_gives_clean_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfnom;valeur\r\nx;1\r\n")
    with open_csv(path) as source:
        assert source.header == ["nom", "valeur"]
        assert source.dialect == sniff(path.read_bytes(), complete=True)


def test_empty_and_broken_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"\n\n")
    with pytest.raises(CsvFormatError, match="empty"):
        open_csv(empty)
    broken = tmp_path / "broken.csv"
    broken.write_text('a;b\n1;"never closed\n', encoding="utf-8")
    with open_csv(broken) as source, pytest.raises(CsvFormatError, match="line 2"):
        list(source.records())


def test_late_non_utf8_byte_switches_the_whole_file_to_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    body = "nom;ville\n" + "x;Paris\n" * 200_000 + "y;Orléans\n"
    path.write_bytes(body.encode("cp1252"))
    with open_csv(path) as source:
        assert source.dialect.encoding == "cp1252"
        last = list(source.records())[-1]
    assert last[1] == ["y", "Orléans"]
