"""Tests of adapters.xml_reader: record paths, parent fields, encodings, refused DTDs, and files broken midway."""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.samples import make_samples
from adapters.source import DATA, SourceError, SourceRow
from adapters.xml_reader import RAW_LIMIT, read_xml
from gateway.domain.identity import parse_id_number
from gateway.errors import ConfigError, InvalidIdNumber

NS = "urn:example:hh:1.0"
NAMESPACES = {"hh": NS}
SAMPLE = make_samples.SAMPLES / "jiangsu-320000.xml"

HOUSEHOLDS = f"""<?xml version="1.0" encoding="UTF-8"?>
<hh:Export xmlns:hh="{NS}" batch="B1">
  <hh:Household id="H1" type="城市低保">
    <hh:HouseholdNo>320102-0001</hh:HouseholdNo>
    <hh:Member seq="1">
      <hh:Name>张三</hh:Name>
      <hh:Id>320102196501011234</hh:Id>
      <hh:Card no="C-1"><hh:Bank>农业银行</hh:Bank></hh:Card>
    </hh:Member>
    <hh:Member seq="2">
      <hh:Name>李四</hh:Name>
    </hh:Member>
    <hh:Note>written after the members: not visible to them</hh:Note>
  </hh:Household>
  <hh:Summary households="2"><hh:Detail>ignored</hh:Detail></hh:Summary>
  <hh:Household id="H2">
    <hh:HouseholdNo>320102-0002</hh:HouseholdNo>
    <hh:Member seq="1"><hh:Name>王五</hh:Name></hh:Member>
  </hh:Household>
</hh:Export>
"""
FIELDS = [
    "hh:Name",
    "hh:Id",
    "@seq",
    "hh:Card/@no",
    "hh:Card/hh:Bank",
    "../@id",
    "../@type",
    "../hh:HouseholdNo",
    "../hh:Note",
    "../../@batch",
]


def write(tmp_path: Path, content: str | bytes, encoding: str = "utf-8", name: str = "export.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def read(path: Path, **options: object) -> list[SourceRow]:
    options.setdefault("record_path", "hh:Household/hh:Member")
    options.setdefault("fields", FIELDS)
    options.setdefault("namespaces", NAMESPACES)
    return list(read_xml(path, **options))  # type: ignore[arg-type]


def test_each_member_is_a_row_with_its_own_and_its_households_fields(tmp_path: Path) -> None:
    found = read(write(tmp_path, HOUSEHOLDS))
    assert [r.kind for r in found] == [DATA, DATA, DATA]
    assert [r.error for r in found] == [None, None, None]
    assert found[0].fields == {
        "hh:Name": "张三",
        "hh:Id": "320102196501011234",
        "@seq": "1",
        "hh:Card/@no": "C-1",
        "hh:Card/hh:Bank": "农业银行",
        "../@id": "H1",
        "../@type": "城市低保",
        "../hh:HouseholdNo": "320102-0001",
        "../hh:Note": "",  # comes after the members: not read yet, as documented
        "../../@batch": "B1",
    }
    assert found[1].fields is not None
    assert found[2].fields is not None
    assert found[1].fields["hh:Name"] == "李四"
    assert found[1].fields["hh:Id"] == ""
    assert found[1].fields["../hh:HouseholdNo"] == "320102-0001"
    assert found[2].fields["../hh:HouseholdNo"] == "320102-0002"
    assert found[2].fields["../@type"] == ""


def test_location_counts_records_and_gives_the_line_of_their_start_tag(tmp_path: Path) -> None:
    found = read(write(tmp_path, HOUSEHOLDS))
    assert [r.location for r in found] == ["element 1 (line 5)", "element 2 (line 10)", "element 3 (line 18)"]


def test_raw_is_the_record_as_written_in_the_file(tmp_path: Path) -> None:
    found = read(write(tmp_path, HOUSEHOLDS))
    assert found[1].raw == '<hh:Member seq="2">\n      <hh:Name>李四</hh:Name>\n    </hh:Member>'
    assert found[2].raw == '<hh:Member seq="1"><hh:Name>王五</hh:Name></hh:Member>'


def test_raw_of_an_empty_record_element_stops_at_its_tag(tmp_path: Path) -> None:
    text = '<r><m a="x>y" b=\'1\'/><m a="2"></m><m/></r>'
    found = list(read_xml(write(tmp_path, text), record_path="m", fields=["@a"]))
    assert [r.raw for r in found] == ["<m a=\"x>y\" b='1'/>", '<m a="2"></m>', "<m/>"]
    assert [r.fields for r in found] == [{"@a": "x>y"}, {"@a": "2"}, {"@a": ""}]


def test_raw_is_cut_after_the_limit(tmp_path: Path) -> None:
    text = "<r><m><n>" + "长" * (RAW_LIMIT * 2) + "</n></m></r>"
    (row,) = read_xml(write(tmp_path, text), record_path="m", fields=["n"])
    assert row.fields == {"n": "长" * (RAW_LIMIT * 2)}
    assert row.raw == ("<m><n>" + "长" * RAW_LIMIT)[:RAW_LIMIT] + "…"


def test_text_is_not_stripped_and_entities_are_resolved(tmp_path: Path) -> None:
    text = "<r><m><n>  a &amp; b &lt;c&gt; &#x5F20;  </n></m></r>"
    (row,) = read_xml(write(tmp_path, text), record_path="m", fields=["n"])
    assert row.fields == {"n": "  a & b <c> 张  "}


def test_elements_off_the_record_path_are_not_records(tmp_path: Path) -> None:
    text = "<r><m><n>1</n></m><x><m><n>2</n></m></x><m><m><n>3</n></m><n>4</n></m></r>"
    found = list(read_xml(write(tmp_path, text), record_path="m", fields=["n"]))
    assert [r.fields for r in found] == [{"n": "1"}, {"n": "4"}]


def test_default_namespace_is_given_with_the_empty_prefix(tmp_path: Path) -> None:
    text = f'<Export xmlns="{NS}"><Member no="7"><Name>赵六</Name></Member></Export>'
    (row,) = read_xml(write(tmp_path, text), record_path="Member", fields=["Name", "@no"], namespaces={"": NS})
    assert row.fields == {"Name": "赵六", "@no": "7"}
    # Without the mapping the unprefixed name is in no namespace, and matches nothing.
    assert list(read_xml(write(tmp_path, text), record_path="Member", fields=["Name"])) == []


def test_prefixed_attributes_and_the_xml_prefix(tmp_path: Path) -> None:
    text = f'<r xmlns:hh="{NS}"><m hh:kind="k" xml:lang="zh"/></r>'
    (row,) = read_xml(write(tmp_path, text), record_path="m", fields=["@hh:kind", "@xml:lang"], namespaces=NAMESPACES)
    assert row.fields == {"@hh:kind": "k", "@xml:lang": "zh"}


@pytest.mark.parametrize("declared", ["GBK", "gbk", "GB2312", "gb18030"])
def test_declared_chinese_encodings_are_decoded_here(tmp_path: Path, declared: str) -> None:
    # 堃 is in GBK but not in GB2312: a file labelled GB2312 is read as GBK.
    content = f'<?xml version="1.0" encoding="{declared}"?>\n<r><m><n>王堃</n><a>救助</a></m></r>'
    codec = "gb18030" if declared == "gb18030" else "gbk"
    (row,) = read_xml(write(tmp_path, content, codec), record_path="m", fields=["n", "a"])
    assert row.fields == {"n": "王堃", "a": "救助"}
    assert row.raw == "<m><n>王堃</n><a>救助</a></m>"


def test_an_explicit_encoding_overrides_the_declaration(tmp_path: Path) -> None:
    content = '<?xml version="1.0" encoding="UTF-8"?>\n<r><m>低保</m></r>'
    (row,) = read_xml(write(tmp_path, content, "gbk"), record_path="m", fields=["."], encoding="gbk")
    assert row.fields == {".": "低保"}


def test_utf16_with_a_byte_order_mark(tmp_path: Path) -> None:
    content = '<?xml version="1.0" encoding="UTF-16"?>\n<r><m><n>特困</n></m></r>'
    (row,) = read_xml(write(tmp_path, content, "utf-16"), record_path="m", fields=["n"])
    assert row.fields == {"n": "特困"}


def test_records_across_chunk_boundaries_in_gbk(tmp_path: Path) -> None:
    # About 1.4 MB of GBK: records, multi-byte characters and tags fall across the 256 KiB chunks.
    members = "".join(f'<m i="{i}"><n>城乡低保对象{i}号</n><p>{"张" * (i % 37)}</p></m>\n' for i in range(20000))
    content = f'<?xml version="1.0" encoding="GBK"?>\n<r>\n{members}</r>\n'
    found = list(read_xml(write(tmp_path, content, "gbk"), record_path="m", fields=["@i", "n", "p"]))
    assert len(found) == 20000
    for i in (0, 1, 4999, 12345, 19999):
        assert found[i].fields == {"@i": str(i), "n": f"城乡低保对象{i}号", "p": "张" * (i % 37)}
        assert found[i].raw == f'<m i="{i}"><n>城乡低保对象{i}号</n><p>{"张" * (i % 37)}</p></m>'
        assert found[i].location == f"element {i + 1} (line {i + 3})"


def test_malformed_xml_midway_yields_the_records_before_then_names_line_and_column(tmp_path: Path) -> None:
    content = "<r>\n<m><n>1</n></m>\n<m><n>2</n></m>\n<m><n>3</n></x>\n<m><n>4</n></m>\n</r>\n"
    rows = read_xml(write(tmp_path, content), record_path="m", fields=["n"])
    assert next(rows).fields == {"n": "1"}
    assert next(rows).fields == {"n": "2"}
    with pytest.raises(SourceError) as caught:
        next(rows)
    assert caught.value.field == str(tmp_path / "export.xml")
    assert caught.value.metadata == {"line": "4", "column": "14"}
    assert "line 4, column 14" in caught.value.message


def test_a_file_cut_short_yields_the_records_before_then_raises(tmp_path: Path) -> None:
    content = "<r><m><n>1</n></m><m><n>2</n></m><m><n>3"
    found: list[SourceRow] = []
    with pytest.raises(SourceError, match="malformed at line 1"):
        found.extend(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))
    assert [r.fields for r in found] == [{"n": "1"}, {"n": "2"}]


def test_a_doctype_is_refused_before_any_entity_expands(tmp_path: Path) -> None:
    # The "billion laughs": ten levels of ten references would expand to 10⁹ "lol"s.
    levels = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    content = f'<?xml version="1.0"?>\n<!DOCTYPE r [\n{chr(10).join(levels)}\n]>\n<r><m><n>&lol9;</n></m></r>'
    with pytest.raises(SourceError, match="DOCTYPE") as caught:
        list(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))
    assert caught.value.metadata == {"line": "2"}


def test_an_external_doctype_is_refused_too(tmp_path: Path) -> None:
    content = '<?xml version="1.0"?>\n<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd">\n<r><m/></r>'
    with pytest.raises(SourceError, match="DOCTYPE"):
        list(read_xml(write(tmp_path, content), record_path="m", fields=["@a"]))


def test_an_undefined_entity_is_malformed_xml(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="undefined entity"):
        list(read_xml(write(tmp_path, "<r><m>&ext;</m></r>"), record_path="m", fields=["."]))


def test_bytes_not_in_the_declared_encoding_stop_the_file_after_the_records_before(tmp_path: Path) -> None:
    head = '<?xml version="1.0" encoding="GBK"?>\n<r>\n<m><n>甲</n></m>\n<m><n>乙</n></m>\n'.encode("gbk")
    content = head + b"<m><n>\xff\xfe</n></m>\n<m><n>x</n></m>\n</r>\n"
    found: list[SourceRow] = []
    with pytest.raises(SourceError) as caught:
        found.extend(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))
    assert [r.fields for r in found] == [{"n": "甲"}, {"n": "乙"}]
    offset = len(head) + len(b"<m><n>")
    assert caught.value.metadata == {"offset": str(offset), "line": "5"}
    assert f"bytes at offset {offset} (line 5) are not valid gbk" in caught.value.message


def test_invalid_utf8_is_malformed_xml_with_its_position(tmp_path: Path) -> None:
    content = b"<r>\n<m><n>ok</n></m>\n<m><n>\xff</n></m>\n</r>"
    found: list[SourceRow] = []
    with pytest.raises(SourceError) as caught:
        found.extend(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))
    assert [r.fields for r in found] == [{"n": "ok"}]
    assert caught.value.metadata == {"line": "3", "column": "7"}


def test_an_unknown_declared_encoding_is_a_source_error(tmp_path: Path) -> None:
    content = '<?xml version="1.0" encoding="x-no-such"?><r/>'
    with pytest.raises(SourceError, match="unknown encoding"):
        list(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))


@pytest.mark.parametrize("declared", ["base64", "zlib", "bz2", "hex", "uu", "quopri", "rot13"])
def test_a_declared_codec_that_is_not_a_character_encoding_is_a_source_error(tmp_path: Path, declared: str) -> None:
    # Python's codecs from bytes to bytes (or text to text) are not encodings an XML file can be in.
    path = write(tmp_path, f'<?xml version="1.0" encoding="{declared}"?><r><m><n>x</n></m></r>')
    with pytest.raises(SourceError, match=f"names an unknown encoding '{declared}'") as caught:
        list(read_xml(path, record_path="m", fields=["n"]))
    assert caught.value.field == str(path)


@pytest.mark.parametrize("declared", ["utf-16", "punycode", "undefined"])
def test_a_codec_refusing_the_bytes_as_a_whole_is_a_source_error_naming_the_offset(
    tmp_path: Path, declared: str
) -> None:
    # These raise a bare UnicodeError (UTF-16 without a byte-order mark, for one), which says no position.
    path = write(tmp_path, f'<?xml version="1.0" encoding="{declared}"?><r><m><n>x</n></m></r>')
    with pytest.raises(SourceError, match="are not valid") as caught:
        list(read_xml(path, record_path="m", fields=["n"]))
    assert caught.value.metadata == {"offset": "0"}


@pytest.mark.parametrize("content", [b"", b"not xml at all", b"<r><m>"])
def test_files_that_are_not_xml_are_source_errors(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(SourceError, match="malformed"):
        list(read_xml(write(tmp_path, content), record_path="m", fields=["n"]))


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open") as caught:
        list(read_xml(tmp_path / "absent.xml", record_path="m", fields=["n"]))
    assert caught.value.field == str(tmp_path / "absent.xml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"record_path": "x:Member"}, "prefix 'x' is not in namespaces"),
        ({"record_path": "hh:Household//hh:Member"}, "is not an XML name"),
        ({"fields": []}, "non-empty list"),
        ({"fields": "hh:Name"}, "non-empty list"),
        ({"fields": ["../../../@x"]}, "does not name"),
        ({"fields": ["hh:Name", "hh:Name"]}, "listed twice"),
        ({"fields": ["hh:Card/@"]}, "is not an XML name"),
        ({"fields": [""]}, "is not an XML name"),
        ({"encoding": "no-such-codec"}, "unknown encoding"),
        ({"encoding": "base64"}, "unknown encoding"),
    ],
)
def test_bad_options_are_config_errors_raised_at_once(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        read(tmp_path / "never-opened.xml", **options)


_TEXT = st.text(alphabet=st.sampled_from("张王李赵低保特困城乡堃0123456789 &<>\"'-,，。abcXYZ"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.tuples(_TEXT, _TEXT, _TEXT), max_size=8),
    encoding=st.sampled_from(["UTF-8", "GBK", "GB18030"]),
)
def test_random_records_round_trip(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[str, ...]], encoding: str
) -> None:
    body = "".join(
        f"<户><户号>{escape(number)}</户号><成员 编号={quoteattr(member_id)}><姓名>{escape(name)}</姓名></成员></户>"
        for number, name, member_id in records
    )
    content = f'<?xml version="1.0" encoding="{encoding}"?>\n<导出>{body}</导出>'
    path = write(tmp_path_factory.mktemp("xml"), content, encoding.lower())
    found = list(read_xml(path, record_path="户/成员", fields=["姓名", "@编号", "../户号"]))
    assert [r.fields for r in found] == [{"姓名": n, "@编号": m, "../户号": h} for h, n, m in records]


def read_sample() -> list[SourceRow]:
    return list(
        read_xml(
            SAMPLE,
            record_path="js:家庭/js:成员",
            fields=make_samples.JIANGSU_FIELDS,
            namespaces={"js": make_samples.JIANGSU_NAMESPACE},
        )
    )


def test_the_jiangsu_sample_is_what_the_generator_writes() -> None:
    assert SAMPLE.read_bytes() == make_samples.jiangsu_xml()
    assert SAMPLE.read_bytes().startswith(b'<?xml version="1.0" encoding="GBK"?>')


def test_the_jiangsu_sample_reads_as_30_members_with_the_documented_bad_ones() -> None:
    found = read_sample()
    assert len(found) == 30
    assert {r.kind for r in found} == {DATA}
    assert all(r.error is None and r.fields is not None for r in found)
    by_element = {int(r.location.split()[1]): r.fields for r in found if r.fields is not None}
    assert list(by_element) == list(range(1, 31))
    assert any("堃" in f["js:姓名"] for f in by_element.values())
    with pytest.raises(InvalidIdNumber) as caught:
        parse_id_number(by_element[5]["js:身份证号"])
    assert caught.value.reason == "ID_NUMBER_BAD_CHECK_CHARACTER"
    assert by_element[10]["../js:所属区县"] == "340104"
    assert by_element[15]["js:身份证号"] == ""
    assert by_element[23]["../js:开始日期"] == "2021年2月30日"
    man = parse_id_number(by_element[26]["js:身份证号"])
    assert man.sequence % 2 == 1
    assert by_element[26]["js:性别"] == "女"
    bad = {5, 10, 15, 23, 26}
    for element, fields in by_element.items():
        if element in bad:
            continue
        number = parse_id_number(fields["js:身份证号"])
        assert number.province_code == "320000"
        assert fields["../js:所属区县"].startswith("32")
        assert fields["js:性别"] == ("男" if number.sequence % 2 else "女")
        assert re.fullmatch(r"\d{4}年\d{1,2}月\d{1,2}日", fields["../js:开始日期"])
        assert re.fullmatch(r"\d+\.\d\d", fields["../js:月保障金"])
        assert fields["../js:救助类别"] in {"城市低保", "农村低保", "特困供养"}
        assert fields["../js:保障状态"] in {"在保", "停保", "退出"}
