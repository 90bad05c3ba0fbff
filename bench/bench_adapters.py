"""Adapter benchmark: GBK CSV and fixed-width exports to validated records, beside a bare parse.

Run: ``.venv/bin/python bench/bench_adapters.py [--rows 1000000]``

In one run, on one core (the adapters are single-threaded):

1. ``--rows`` synthetic persons are written once as a GBK CSV in the Guangdong sample's layout
   and once as a GBK fixed-width file in the Zhejiang sample's layout (not timed);
2. each file goes through ``adapters.run.adapt`` with the shipped profile: read, decode, map,
   transform, convert codes, dates and amounts, and validate every record with the hub's rules;
   records are discarded (writing JSON Lines is timed separately, as ``+ write``);
3. baseline in the same run: the same bytes read and split by the standard library alone
   (``csv.reader`` over the decoded file; ``bytes`` slicing and decoding for fixed-width);
4. the ceiling in the same run: the CSV through a loop written by hand for this one layout, doing
   the least that "a validated record" takes: split the row, check the ID number's check
   character, read two dates and the amount, look up the divisions and the codes, build the
   record. No profile, no transforms, no other rule, no reject detail. The declarative adapter
   does all of that and more, so it cannot be faster than this loop.

Prints rows/s, the ratio to the baseline, and the peak RSS of the process. Target (issue 5):
≥ 100,000 rows/s for both on one core; peak RSS ≤ 200 MB on a 2 GB input (``--rows 12000000``
writes about 2 GB of CSV).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import random
import resource
import shutil
import tempfile
import time
from operator import mul
from pathlib import Path

from adapters.profile import load_profile
from adapters.run import adapt, record_to_json
from adapters.samples.synthetic import write_guangdong_export
from gateway.domain.divisions import counties_of
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, PersonRecord

ROOT = Path(__file__).resolve().parent.parent
GD = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
ZJ = ROOT / "adapters" / "profiles" / "zhejiang-330000.toml"


def _people(n: int, province: str, seed: int) -> list[tuple[str, str, str, dt.date, dt.date]]:
    rng = random.Random(seed)
    counties = counties_of(province)
    names = [a + b for a in "王李张刘陈杨黄赵吴周" for b in ("伟", "芳", "秀英", "建国", "敏", "静")]
    out = []
    for _ in range(min(n, 20_000)):  # a pool, cycled: generation must not dominate the set-up
        county = rng.choice(counties)
        birth = dt.date(rng.randint(1940, 2012), rng.randint(1, 12), rng.randint(1, 28))
        start = dt.date(rng.randint(2016, 2025), rng.randint(1, 12), rng.randint(1, 28))
        out.append((county, make_id_number(county, birth, rng.randint(1, 998)), rng.choice(names), birth, start))
    return out


def write_csv(path: Path, rows: int) -> None:
    write_guangdong_export(path, range(rows))


def write_fixed(path: Path, rows: int) -> None:
    pool = _people(rows, "330000", 2)
    with path.open("wb") as fh:
        fh.write(b"H" + "浙江省民政救助系统数据交换".encode("gbk").ljust(40) + b"20261128\r\n")
        for i in range(rows):
            county, idn, name, _birth, start = pool[i % len(pool)]
            sex = b"1" if int(idn[16]) % 2 else b"2"
            fh.write(
                b"D" + f"ZJ{i + 1:010d}".encode() + name.encode("gbk").ljust(10) + idn.encode() + sex
                + county.encode() + b"01" + b"1" + f"{start:%Y%m%d}".encode() + b" " * 8 + b"00088000"
                + county.encode() + f"ZJH{i // 3:07d}".encode() + b"\r\n"
            )  # fmt: skip
        fh.write(b"T" + f"{rows:08d}".encode() + b"\r\n")


def bare_csv(path: Path) -> float:
    started = time.perf_counter()
    with path.open("r", encoding="gbk", newline="") as fh:
        for _ in csv.reader(fh):
            pass
    return time.perf_counter() - started


def bare_fixed(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as fh:
        for line in fh:
            for start, end in ((1, 13), (13, 23), (23, 41), (41, 42), (42, 48), (48, 50), (50, 51), (51, 59)):
                line[start:end].decode("gbk")
    return time.perf_counter() - started


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ASCII_ZEROS = ord("0") * sum(_WEIGHTS)


def hand_fused_csv(path: Path) -> tuple[float, int]:
    """The Guangdong CSV through the least per-row work a validated record needs; (seconds, records)."""
    divisions = set(counties_of("440000"))
    genders = {"男": 1, "女": 2}
    programs = {"城市低保": 1}
    statuses = {"在保": 1}
    produced = 0
    started = time.perf_counter()
    with path.open("r", encoding="gbk", newline="") as fh:
        rows = csv.reader(fh)
        for _ in range(3):  # title, export time, header
            next(rows)
        for f in rows:
            if f[0] == "合计":
                continue
            idn = f[5]
            # GB 11643 check character: the digits' weighted sum, from their ASCII codes in one pass.
            if (
                len(idn) != 18
                or "10X98765432"[(sum(map(mul, idn[:17].encode(), _WEIGHTS)) - _ASCII_ZEROS) % 11] != idn[17]
            ):
                continue
            year, rest = f[12].split("年")
            month, day = rest[:-1].split("月")
            whole, _, cents = f[14].partition(".")
            if f[7] not in divisions or f[8] not in divisions or f[15] not in divisions:
                continue
            enrollment = Enrollment(
                programs[f[10]], statuses[f[11]], dt.date(int(year), int(month), int(day)), None,
                int(whole) * 100 + int(cents or 0), f[15],
            )  # fmt: skip
            PersonRecord(
                record_id=f[1], version=1, id_number=idn, name=f[3], gender=genders[f[4]],
                birth_date=dt.date.fromisoformat(f[6]), hukou_division=f[7], residence_division=f[8],
                household_id=f[2], enrollments=(enrollment,), updated_at_us=0,
            )  # fmt: skip
            produced += 1
    return time.perf_counter() - started, produced


def timed(profile_path: Path, path: Path, *, write: bool) -> tuple[float, int, int]:
    profile = load_profile(profile_path)
    out = io.StringIO()
    produced = rejected = 0

    def on_record(record: object) -> None:
        nonlocal produced
        produced += 1
        if write:
            out.write(record_to_json(record))  # type: ignore[arg-type]
            if out.tell() > 1 << 24:
                out.seek(0)
                out.truncate()

    def on_reject(_reject: object) -> None:
        nonlocal rejected
        rejected += 1

    started = time.perf_counter()
    adapt(profile, [path], on_record=on_record, on_reject=on_reject)
    return time.perf_counter() - started, produced, rejected


def main() -> None:
    """Write the inputs, run both formats, print figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per file (default 1,000,000)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hutong-bench-adapters-"))
    try:
        gd, zj = work / "gd.csv", work / "zj.dat"
        write_csv(gd, args.rows)
        write_fixed(zj, args.rows)
        print(f"inputs: CSV {gd.stat().st_size / 2**20:,.0f} MiB, fixed-width {zj.stat().st_size / 2**20:,.0f} MiB")
        for label, profile, path, bare in (("GBK CSV", GD, gd, bare_csv), ("fixed-width", ZJ, zj, bare_fixed)):
            base = bare(path)
            seconds, produced, rejected = timed(profile, path, write=False)
            written, _, _ = timed(profile, path, write=True)
            rate = args.rows / seconds
            print(
                f"{label:12} {rate:>10,.0f} rows/s to validated records ({produced:,} records, {rejected:,} rejected);"
                f" bare parse {args.rows / base:,.0f} rows/s (adapt/bare {base / seconds:.2f});"
                f" + write JSON {args.rows / written:,.0f} rows/s   target ≥ 100,000 rows/s"
            )
        fused, fused_records = hand_fused_csv(gd)
        print(
            f"{'ceiling':12} {args.rows / fused:>10,.0f} rows/s: the GBK CSV through a loop written by hand for its"
            f" layout ({fused_records:,} records), the least a validated record takes in CPython here"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak:,.0f} MiB   target ≤ 200 MB on a 2 GB input")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
