"""Manifest loading: the contract's examples load, every mistake is named precisely.

The corpus of malformed manifests lives in ``tests/manifests/``; ``expected.toml`` there lists,
for each, the fragments its error must contain (see the comment at its top).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bulkrerun.errors import BadInput, ManifestError
from bulkrerun.manifest import (
    INSTANCE_FIELDS,
    JOB_ID_MAX,
    MAX_PROBLEMS_PER_FILE,
    Instance,
    InstancesEntry,
    SelectEntry,
    WindowEntry,
    iter_instances,
    load_manifest,
    parse_span,
)
from bulkrerun.report import status
from tests.conftest import Cli
from tests.test_report import FILE_MANIFEST, INSTANCES_CSV, run_from_manifest

CORPUS = Path(__file__).parent / "manifests"
EXPECTED: dict[str, list[str]] = tomllib.loads((CORPUS / "expected.toml").read_text())["expect"]
CONFIGS = Path(__file__).parent.parent / "configs"
WS = "62fbba734e634c5087656fc3ff7adf34"

HEAD = f"""\
version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
"""

# The manifest of CONTRACT.md, verbatim apart from the comments.
CONTRACT_EXAMPLE = f"""\
version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
ignore_obs_monitor = true
timezone = "Asia/Shanghai"

[[window]]
job_name = "ods_orders"
begin = "2024-11-26T08:00:00+08:00"
end   = "2024-11-26T20:00:00+08:00"
chunk = "1h"
concurrent = 8
jobs = [ {{ job_name = "dwd_orders", workspace_id = "{WS}" }} ]

[[instances]]
job_name = "ods_payments"
batch = 50
items = [ {{ job_id = 917567, plan_time = 1732601580000, submit_time = 1732239754684 }} ]

[[select]]
job_names = ["ods_orders", "ods_payments"]
begin = "2024-11-26T02:00:00+08:00"
end   = "2024-11-26T06:00:00+08:00"
status = ["fail", "running-exception"]
batch = 100
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, now_ms: int | None = None) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, now_ms=now_ms)
    return caught.value.problems


# ---------------------------------------------------------------------------------------------
# Good manifests
# ---------------------------------------------------------------------------------------------


def test_contract_example_loads_with_defaults_merged(tmp_path: Path) -> None:
    path = write(tmp_path, "demo.toml", CONTRACT_EXAMPLE)
    manifest = load_manifest(path)

    window, instances, select = manifest.entries
    assert window == WindowEntry(
        label="window[0]",
        workspace=WS,
        retry_location="errorNode",
        retry_task_version="original_version",
        ignore_obs_monitor=True,
        node_name=None,
        job_name="ods_orders",
        begin_ms=1732579200000,
        end_ms=1732622400000,
        chunk_ms=3_600_000,
        concurrent=8,
        jobs=(("dwd_orders", WS),),
        timezone="Asia/Shanghai",  # [defaults]: what its times are shown in again
    )
    assert isinstance(instances, InstancesEntry)
    assert instances.label == "instances[0]"
    assert instances.batch == 50
    assert instances.items == (Instance(917567, 1732601580000, 1732239754684),)
    assert instances.file is None
    assert isinstance(select, SelectEntry)
    assert select.job_names == ("ods_orders", "ods_payments")
    assert select.statuses == ("fail", "running-exception")
    assert (select.begin_ms, select.end_ms) == (1732557600000, 1732572000000)
    assert manifest.text == path.read_text()
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest.files == {}
    assert manifest.warnings == ()


def test_json_manifest_equals_toml(tmp_path: Path) -> None:
    data = tomllib.loads(CONTRACT_EXAMPLE)
    from_json = load_manifest(write(tmp_path, "demo.json", json.dumps(data)))
    from_toml = load_manifest(write(tmp_path, "demo.toml", CONTRACT_EXAMPLE))
    assert from_json.entries == from_toml.entries


def test_entry_overrides_defaults_and_defaults_apply(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[window]]
job_name = "a"
begin = 1732579200000
end = 1732622400000
chunk = "30m"

[[window]]
job_name = "b"
workspace = "other"
retry_location = "specifiedNode"
node_name = "load"
retry_task_version = "current_version"
ignore_obs_monitor = false
begin = 1732579200000
end = 1732622400000
chunk = "1d"
"""
    )
    first, second = load_manifest(write(tmp_path, "m.toml", text)).entries
    assert isinstance(first, WindowEntry)
    assert isinstance(second, WindowEntry)
    assert (first.workspace, first.retry_location, first.node_name) == (WS, "errorNode", None)
    assert first.ignore_obs_monitor is True
    assert first.concurrent == 1
    assert first.jobs == ()
    assert first.chunk_ms == 30 * 60_000
    assert (second.workspace, second.retry_location, second.node_name) == (
        "other",
        "specifiedNode",
        "load",
    )
    assert second.retry_task_version == "current_version"
    assert second.ignore_obs_monitor is False
    assert second.chunk_ms == 86_400_000


@pytest.mark.parametrize(
    ("written", "expected_ms"),
    [
        ('"2024-11-26T08:00:00+08:00"', 1732579200000),
        ('"2024-11-26T00:00:00Z"', 1732579200000),
        ("2024-11-26T08:00:00+08:00", 1732579200000),  # a TOML date-time, unquoted
        ('"2024-11-26T08:00:00"', 1732579200000),  # naive: read in Asia/Shanghai
        ("2024-11-26T08:00:00", 1732579200000),  # TOML local date-time
        ("2024-11-26", 1732550400000),  # TOML local date: midnight there
        ('"2024-11-26T08:00:00.250+08:00"', 1732579200250),
        ("1732579200000", 1732579200000),
    ],
)
def test_time_forms(tmp_path: Path, written: str, expected_ms: int) -> None:
    text = (
        HEAD
        + f"""timezone = "Asia/Shanghai"

[[window]]
job_name = "a"
begin = {written}
end = 1832579200000
chunk = "1h"
"""
    )
    (entry,) = load_manifest(write(tmp_path, "m.toml", text)).entries
    assert isinstance(entry, WindowEntry)
    assert entry.begin_ms == expected_ms


def test_entry_timezone_overrides_default(tmp_path: Path) -> None:
    text = (
        HEAD
        + """timezone = "Asia/Shanghai"

[[window]]
job_name = "a"
timezone = "UTC"
begin = "2024-11-26T00:00:00"
end = "2024-11-26T01:00:00"
chunk = "1h"
"""
    )
    (entry,) = load_manifest(write(tmp_path, "m.toml", text)).entries
    assert isinstance(entry, WindowEntry)
    assert entry.begin_ms == 1732579200000


def test_ambiguous_local_time_is_refused(tmp_path: Path) -> None:
    text = (
        HEAD
        + """timezone = "America/New_York"

[[window]]
job_name = "a"
begin = "2024-11-03T01:30:00"
end = "2024-11-03T05:00:00"
chunk = "1h"
"""
    )
    (problem,) = problems_of(write(tmp_path, "m.toml", text))
    assert "window[0].begin" in problem
    assert "happens twice in America/New_York" in problem


def test_spans_are_fixed_durations() -> None:
    assert parse_span("30s") == 30_000
    assert parse_span("15m") == 900_000
    assert parse_span("1h") == 3_600_000
    assert parse_span("1d") == 86_400_000
    for bad in ("", "h", "1", "1.5h", "-1h", "0s", "1 h x", "1w", "1H"):
        with pytest.raises(ValueError, match="span"):
            parse_span(bad)


def test_entries_keep_document_order_across_kinds(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[instances]]
job_name = "i0"
items = [ { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 } ]

[[window]]
job_name = "w0"
begin = 1732579200000
end = 1732622400000
chunk = "1h"

[[instances]]
job_name = "i1"
items = [ { job_id = 2, plan_time = 1732601580000, submit_time = 1732239754684 } ]
"""
    )
    manifest = load_manifest(write(tmp_path, "m.toml", text))
    assert [entry.label for entry in manifest.entries] == [
        "instances[0]",
        "window[0]",
        "instances[1]",
    ]


def test_select_single_job_name_and_default_status(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[select]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732622400000
"""
    )
    (entry,) = load_manifest(write(tmp_path, "m.toml", text)).entries
    assert isinstance(entry, SelectEntry)
    assert entry.job_names == ("ods_orders",)
    assert entry.statuses == ("fail",)
    assert entry.batch == 100


def test_select_reach_is_checked_only_when_now_is_given(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[select]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732622400000
"""
    )
    path = write(tmp_path, "m.toml", text)
    load_manifest(path)  # resuming from a journal: the recorded selection is used
    load_manifest(path, now_ms=1732622400000 + 86_400_000)
    (problem,) = problems_of(path, now_ms=1732579200000 + 40 * 86_400_000)
    assert "select[0].begin = 1732579200000: is more than 31 days ago" in problem


def test_overlapping_windows_of_one_job_are_warned_about(tmp_path: Path) -> None:
    text = (
        HEAD
        + """
[[window]]
job_name = "a"
begin = 1732579200000
end = 1732622400000
chunk = "1h"

[[window]]
job_name = "a"
begin = 1732600000000
end = 1732700000000
chunk = "1h"

[[window]]
job_name = "b"
begin = 1732579200000
end = 1732622400000
chunk = "1h"
"""
    )
    manifest = load_manifest(write(tmp_path, "m.toml", text))
    (warning,) = manifest.warnings
    assert "window[0] and window[1] overlap" in warning


def six_hours(job: str, *, jobs: str = "", start_h: int = 0, workspace: str = "") -> str:
    """A [[window]] of ``job``, 6 hours from 2024-11-26T00:00Z (``start_h`` hours later)."""
    begin = 1732579200000 + start_h * 3_600_000
    extra = f"jobs = [{jobs}]\n" if jobs else ""
    extra += f'workspace = "{workspace}"\n' if workspace else ""
    return (
        f'\n[[window]]\njob_name = "{job}"\nbegin = {begin}\nend = {begin + 6 * 3_600_000}\n'
        f'chunk = "1h"\n{extra}'
    )


def job(name: str, workspace: str = WS) -> str:
    return f'{{ job_name = "{name}", workspace_id = "{workspace}" }}'


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_job_in_jobs_is_covered_for_overlaps_as_a_window_of_its_own_is(
    tmp_path: Path, suffix: str
) -> None:
    """window[0] reruns ods_users and, through its jobs, dwd_users; window[1] reruns dwd_users
    over the same 6 hours: dwd_users instances run twice, and the warning names dwd_users."""
    text = HEAD + six_hours("ods_users", jobs=job("dwd_users")) + six_hours("dwd_users")
    if suffix == ".json":
        text = json.dumps(tomllib.loads(text))
    manifest = load_manifest(write(tmp_path, "m" + suffix, text))
    assert manifest.warnings == (
        f"{tmp_path / ('m' + suffix)}: window[0] and window[1] overlap for job dwd_users (in "
        "jobs of window[0], job_name of window[1]): its instances in the overlap are rerun "
        "twice",
    )


def test_overlaps_are_judged_on_every_job_a_window_covers(tmp_path: Path) -> None:
    """Each job two windows both cover at overlapping times is named once per pair of
    entries, in manifest order; a job of another workspace, or times that only touch, are no
    overlap."""
    text = (
        HEAD
        + six_hours("a", jobs=job("x"), start_h=12)  # 0: after window[1] in time
        + six_hours("b", jobs=f"{job('x')}, {job('y')}", start_h=6)  # 1: ends as 0 begins
        + six_hours("c", jobs=f"{job('y')}, {job('x')}", start_h=3)  # 2
        + six_hours("y", jobs=job("b"), start_h=8)  # 3
        + six_hours("x", workspace="f" * 32)  # 4: another workspace's x
        + six_hours("a", jobs=job("x"), start_h=14)  # 5: same job_name as 0
    )
    warnings = load_manifest(write(tmp_path, "m.toml", text)).warnings
    tail = ": its instances in the overlap are rerun twice"
    said = [w.split(": ", 1)[1].replace(tail, "") for w in warnings]
    same = " unless the two entries cut identical chunks"
    assert said == [
        "window[0] and window[5] overlap for job a: instances in the overlap are rerun twice"
        + same,
        "window[0] and window[5] overlap for job x (in jobs of window[0], in jobs of window[5])"
        + same,
        "window[1] and window[2] overlap for job x (in jobs of window[1], in jobs of window[2])",
        "window[1] and window[2] overlap for job y (in jobs of window[1], in jobs of window[2])",
        "window[1] and window[3] overlap for job b (job_name of window[1], in jobs of window[3])",
        "window[1] and window[3] overlap for job y (in jobs of window[1], job_name of window[3])",
        "window[2] and window[3] overlap for job y (in jobs of window[2], job_name of window[3])",
    ]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_window_that_lists_its_own_job_or_one_job_twice_in_jobs_is_refused(
    tmp_path: Path, suffix: str
) -> None:
    text = (
        HEAD
        + six_hours("ods_users", jobs=f"{job('dwd_users')}, {job('ods_users')}")
        + six_hours("ods_orders", jobs=f"{job('dwd_orders')}, {job('dwd_orders')}")
        # The same job name in another workspace is another job.
        + six_hours("ods_items", jobs=job("ods_items", "f" * 32))
    )
    if suffix == ".json":
        text = json.dumps(tomllib.loads(text))
    path = write(tmp_path, "m" + suffix, text)
    assert problems_of(path) == [
        f'{path}: window[0].jobs[1].job_name = "ods_users": is the window\'s own job (its '
        "job_name, in the same workspace), which the window reruns already; list only its "
        "upstream and downstream jobs in jobs",
        f'{path}: window[1].jobs[1].job_name = "dwd_orders": repeats jobs[0] (the same '
        "job_name and workspace_id); list each job once",
    ]


def test_a_window_listing_its_own_job_is_refused_beside_a_broken_line_of_jobs(
    tmp_path: Path,
) -> None:
    # Validation is total: the line without a workspace_id hid the line naming the window's
    # own job, which the operator met only after mending the first, one pass later.
    broken = '{ job_name = "dwd_users" }'
    jobs = f"{job('ods_users')}, {broken}, {job('x')}, {job('x')}"
    text = HEAD + six_hours("ods_users", jobs=jobs)
    path = write(tmp_path, "m.toml", text)
    assert problems_of(path) == [
        f"{path}: window[0].jobs[1].workspace_id: missing; required: the workspace ID of that job",
        f'{path}: window[0].jobs[0].job_name = "ods_users": is the window\'s own job (its '
        "job_name, in the same workspace), which the window reruns already; list only its "
        "upstream and downstream jobs in jobs",
        f'{path}: window[0].jobs[3].job_name = "x": repeats jobs[2] (the same '
        "job_name and workspace_id); list each job once",
    ]


def test_a_time_without_an_offset_is_shown_as_written(tmp_path: Path) -> None:
    # Shown as "2024-11-26T03:00:00", the value could not be found in the file that said
    # "2024-11-26 03:00". A TOML local date-time (unquoted) has no other spelling to show.
    text = (
        HEAD + '\n[[window]]\njob_name = "j"\nbegin = "2024-11-26 03:00"\n'
        'end = 2024-11-26T04:00:00\nchunk = "1h"\n'
    )
    path = write(tmp_path, "m.toml", text)
    hint = (
        ": has no UTC offset and no timezone is set; write it with an offset "
        '(2024-11-26T08:00:00+08:00) or set timezone = "Asia/Shanghai" in [defaults]'
    )
    assert problems_of(path) == [
        f'{path}: window[0].begin = "2024-11-26 03:00"{hint}',
        f"{path}: window[0].end = 2024-11-26T04:00:00{hint}",
    ]


# ---------------------------------------------------------------------------------------------
# Instance files
# ---------------------------------------------------------------------------------------------


def instances_manifest(folder: Path, file_name: str) -> Path:
    text = HEAD + f'\n[[instances]]\njob_name = "p"\nbatch = 2\nfile = "{file_name}"\n'
    return write(folder, "m.toml", text)


def test_csv_file_is_resolved_hashed_and_streamed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # A BOM, CRLF line ends, quoted cells, spaces and a blank line are what exports look like.
    content = (
        b"\xef\xbb\xbfjob_id,plan_time,submit_time\r\n"
        b'1,1732601580000,1732239754684\r\n"2", 1732601580001 ,1732239754685\r\n\r\n'
    )
    (data / "failed.csv").write_bytes(content)
    manifest = load_manifest(instances_manifest(tmp_path, "data/failed.csv"))

    (entry,) = manifest.entries
    assert isinstance(entry, InstancesEntry)
    assert entry.file == (tmp_path / "data" / "failed.csv").resolve()
    assert entry.file_name == "data/failed.csv"
    assert manifest.files == {
        str((data / "failed.csv").resolve()): hashlib.sha256(content).hexdigest()
    }
    assert list(iter_instances(entry)) == [
        Instance(1, 1732601580000, 1732239754684),
        Instance(2, 1732601580001, 1732239754685),
    ]


def test_plain_csv_rows_are_read_without_judging_each_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file is read once to be checked and again for every plan made of it (run: twice,
    # status: once): at about 5 us a row, status of a 300,000-row file spent 3 s reading it.
    import bulkrerun.manifest as manifest_module

    rows = "".join(f"{917_000 + i},{1732601580000 + i},1732239754684\n" for i in range(500))
    (tmp_path / "failed.csv").write_text("job_id,plan_time,submit_time\n" + rows)
    judged = 0
    real = manifest_module._value_problems

    def counting(values: dict[str, object]) -> list[str]:
        nonlocal judged
        judged += 1
        return real(values)

    monkeypatch.setattr(manifest_module, "_value_problems", counting)
    (entry,) = load_manifest(instances_manifest(tmp_path, "failed.csv")).entries
    assert isinstance(entry, InstancesEntry)
    instances = list(iter_instances(entry))
    assert judged == 0
    assert len(instances) == 500
    assert instances[-1] == Instance(917_499, 1732601580499, 1732239754684)


@pytest.mark.parametrize(
    "row",
    [
        "1,1732601580000,1732239754684",  # plain
        f"{JOB_ID_MAX},1732601580000,1732239754684",  # the largest job_id
        f"{JOB_ID_MAX + 1},1732601580000,1732239754684",  # 19 digits, too large
        "0,1732601580000,1732239754684",
        "007,1732601580000,1732239754684",  # leading zeros still read as the number
        "1,0732601580000,1732239754684",  # 13 characters, 12 digits of value
        "1,1732601580,1732239754684",  # epoch seconds
        "1,1732601580000000,1732239754684",  # epoch microseconds
        "1,9999999999999,1000000000000",  # the ends of the range
        " 1,1732601580000 , 1732239754684",  # spaces
        '"1","1732601580000","1732239754684"',  # quoted
        "1,17326015800\u06600,1732239754684",  # a non-ASCII digit (ARABIC-INDIC ZERO)
        "1,173260158000\u00b2,1732239754684",  # a superscript two
        "+1,1732601580000,1732239754684",
        "1.0,1732601580000,1732239754684",
    ],
)
def test_a_csv_row_reads_the_same_whether_plain_or_not(tmp_path: Path, row: str) -> None:
    """Plain rows take a shorter path (see the test above); every row must come out of it
    as the general path makes it: the same instance, or the same problem."""
    import bulkrerun.manifest as manifest_module

    path = tmp_path / "one.csv"
    path.write_text("job_id,plan_time,submit_time\n" + row + "\n", encoding="utf-8")
    ((line, got),) = manifest_module._rows(path)
    values = {
        name: manifest_module._cell(cell)
        for name, cell in zip(INSTANCE_FIELDS, next(csv.reader([row])), strict=True)
    }
    problems = manifest_module._value_problems(values)
    assert line == 2
    assert got == (
        problems or Instance(values["job_id"], values["plan_time"], values["submit_time"])
    )


def test_jsonl_file_is_streamed(tmp_path: Path) -> None:
    lines = [
        {"job_id": 7, "plan_time": 1732601580000, "submit_time": 1732239754684},
        {"submit_time": 1732239754685, "plan_time": 1732601580001, "job_id": 8},
    ]
    (tmp_path / "failed.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    (entry,) = load_manifest(instances_manifest(tmp_path, "failed.jsonl")).entries
    assert isinstance(entry, InstancesEntry)
    assert [i.job_id for i in iter_instances(entry)] == [7, 8]


def test_iter_instances_refuses_a_file_broken_after_validation(tmp_path: Path) -> None:
    path = tmp_path / "failed.csv"
    path.write_text("job_id,plan_time,submit_time\n1,1732601580000,1732239754684\n")
    (entry,) = load_manifest(instances_manifest(tmp_path, "failed.csv")).entries
    assert isinstance(entry, InstancesEntry)
    path.write_text("job_id,plan_time,submit_time\n1,1732601580000,1732239754684\nx,1,2\n")
    with pytest.raises(ManifestError, match=r"failed.csv:3: job_id = \"x\""):
        list(iter_instances(entry))


def test_problems_of_one_file_are_capped(tmp_path: Path) -> None:
    rows = "".join(f"{i},1,1732239754684\n" for i in range(1, 101))
    (tmp_path / "failed.csv").write_text("job_id,plan_time,submit_time\n" + rows)
    problems = problems_of(instances_manifest(tmp_path, "failed.csv"))
    assert len(problems) == MAX_PROBLEMS_PER_FILE + 1
    assert "failed.csv:2: plan_time = 1: must be 13-digit epoch milliseconds" in problems[0]
    assert problems[-1].endswith("80 more problems like these not shown")


def test_file_used_twice_is_read_once_and_reported_once(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("job_id,plan_time,submit_time\n1,2,3\n")
    text = HEAD + "".join(
        f'\n[[instances]]\njob_name = "j{i}"\nfile = "bad.csv"\n' for i in range(2)
    )
    problems = problems_of(write(tmp_path, "m.toml", text))
    assert len([p for p in problems if "plan_time = 2" in p]) == 1


@pytest.mark.parametrize("name", ["m.toml", "m.json"])
@pytest.mark.parametrize("text", ["", "\ufeff", " \n\n"])
def test_an_empty_file_is_said_to_be_empty(tmp_path: Path, name: str, text: str) -> None:
    # E.g. `report --format manifest > m.toml` with nothing to rerun, then `plan m.toml`.
    (problem,) = problems_of(write(tmp_path, name, text))
    assert problem.startswith(f"{tmp_path / name}: the file is empty;")
    assert "version = 1" in problem and "[[window]]" in problem
    assert "report --format manifest" in problem


def test_non_utf8_line_is_reported_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_bytes(
        b"job_id,plan_time,submit_time\n1,1732601580000,1732239754684\n\xff\xfe,1,2\n"
    )
    (problem,) = problems_of(instances_manifest(tmp_path, "bad.csv"))
    assert "instances[0].file: bad.csv:3:" in problem


def test_jsonl_line_with_an_unknown_key_still_has_its_values_checked(tmp_path: Path) -> None:
    line = {"job_id": True, "plan_time": 1732601580000, "submit_time": 1732239754684, "extra": 1}
    (tmp_path / "failed.jsonl").write_text(json.dumps(line) + "\n")
    problems = problems_of(instances_manifest(tmp_path, "failed.jsonl"))
    assert len(problems) == 2
    assert "failed.jsonl:1: extra: unknown key" in problems[0]
    assert "failed.jsonl:1: job_id = true: must be a positive integer" in problems[1]


def test_csv_below_a_bad_header_still_has_its_values_checked(tmp_path: Path) -> None:
    (tmp_path / "typo.csv").write_text(
        "job_id,plan_time,submit_tme\n0,1732601580000,1732239754684\n"
    )
    problems = problems_of(instances_manifest(tmp_path, "typo.csv"))
    assert len(problems) == 2
    assert "typo.csv:1: header" in problems[0]
    assert "typo.csv:2: job_id = 0: must be a positive integer" in problems[1]


def test_a_csv_row_whose_quoted_cell_spans_lines_is_named_where_it_begins(
    tmp_path: Path,
) -> None:
    (tmp_path / "wrapped.csv").write_text(
        "job_id,plan_time,submit_time\n"
        '"9175\n61",1732601580000,1732239754684\n'
        "917562,17326015800,1732239754684\n"
    )
    problems = problems_of(instances_manifest(tmp_path, "wrapped.csv"))
    assert len(problems) == 2
    assert 'wrapped.csv:2: job_id = "9175\\n61": must be a positive integer' in problems[0]
    assert "wrapped.csv:4: plan_time = 17326015800" in problems[1]


def test_csv_with_an_extra_column_is_one_problem_not_one_per_row(tmp_path: Path) -> None:
    rows = "".join(f"{i},1732601580000,1732239754684,note\n" for i in range(1, 6))
    (tmp_path / "extra.csv").write_text("job_id,plan_time,submit_time,note\n" + rows + "7,8\n")
    problems = problems_of(instances_manifest(tmp_path, "extra.csv"))
    assert len(problems) == 2
    assert "extra.csv:1: header" in problems[0]
    # A row that does not even match the header is still named.
    assert "extra.csv:7: has 2 fields: the header has 4" in problems[1]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_number_too_long_to_read_is_a_problem_not_a_crash(tmp_path: Path, suffix: str) -> None:
    huge = "9" * 5000
    if suffix == ".csv":
        content = f"job_id,plan_time,submit_time\n{huge},1732601580000,1732239754684\n"
    else:
        content = f'{{"job_id": {huge}, "plan_time": 1732601580000, "submit_time": 1}}\n'
    (tmp_path / f"huge{suffix}").write_text(content)
    (problem,) = problems_of(instances_manifest(tmp_path, f"huge{suffix}"))
    assert f"huge{suffix}:" in problem


def stray_quote_csv(path: Path, rows: int = 10_000) -> None:
    """An export of ``rows`` instances with a stray double quote at the start of line 4: the
    quoted cell it opens takes in the lines after it until it passes the csv module's limit
    of 131072 characters."""
    lines = [f"{i},1732601580000,1732239754684\n" for i in range(1, rows + 1)]
    lines[2] = '"' + lines[2]
    path.write_text("job_id,plan_time,submit_time\n" + "".join(lines))


def test_a_stray_quote_in_a_csv_is_one_problem_at_its_line_not_a_crash(tmp_path: Path) -> None:
    stray_quote_csv(tmp_path / "x.csv")
    (problem,) = problems_of(instances_manifest(tmp_path, "x.csv"))
    assert problem.startswith(f"{tmp_path / 'm.toml'}: instances[0].file: x.csv:4: ")
    assert "131072 characters" in problem and "stray double quote" in problem


def test_a_csv_cell_over_the_limit_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text(
        "job_id,plan_time,submit_time\n1,1732601580000,1732239754684\n"
        + "1" * 200_000
        + ",1732601580000,1732239754684\n"
    )
    (problem,) = problems_of(instances_manifest(tmp_path, "x.csv"))
    assert "instances[0].file: x.csv:3: a cell runs on past 131072 characters" in problem


def test_a_carriage_return_inside_a_csv_cell_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"job_id,plan_time,submit_time\n1,17326\r01580000,2\n")
    (problem,) = problems_of(instances_manifest(tmp_path, "x.csv"))
    assert "instances[0].file: x.csv:2: holds a carriage return" in problem


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # CR line ends (a spreadsheet's "CSV (Macintosh)"): the header is the first row read.
        (
            b"job_id,plan_time,submit_time\r1,1732601580000,1732239754684\r",
            "x.csv:1: holds a carriage return",
        ),
        # A quote that runs on from the header.
        (b'"job_id,plan_time,submit_time\n' + b"1,2,3\n" * 30_000, "x.csv:1: a cell runs on"),
    ],
)
def test_a_csv_the_csv_module_refuses_at_its_header_is_a_problem_not_a_crash(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    (tmp_path / "x.csv").write_bytes(data)
    (problem,) = problems_of(instances_manifest(tmp_path, "x.csv"))
    assert f"instances[0].file: {expected}" in problem


def test_iter_instances_refuses_a_csv_damaged_after_validation(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("job_id,plan_time,submit_time\n1,1732601580000,1732239754684\n")
    (entry,) = load_manifest(instances_manifest(tmp_path, "x.csv")).entries
    assert isinstance(entry, InstancesEntry)
    stray_quote_csv(path)
    with pytest.raises(ManifestError, match=r"x.csv:4: a cell runs on past 131072"):
        list(iter_instances(entry))


def test_status_says_a_csv_damaged_after_the_run_changed(tmp_path: Path) -> None:
    # status makes the plan again from the journal's copy of the manifest, reading the file.
    manifest = write(tmp_path, "m.toml", FILE_MANIFEST.replace("FILE", "x.csv"))
    (tmp_path / "x.csv").write_text(INSTANCES_CSV)
    run_from_manifest(tmp_path / "j", manifest, sent=1)
    stray_quote_csv(tmp_path / "x.csv")
    summary = status(tmp_path / "j")
    assert summary.pending is None
    assert summary.pending_unknown is not None
    assert f"{tmp_path / 'x.csv'} (instances[0]) changed since run 1" in summary.pending_unknown


GOOD_CSV = "job_id,plan_time,submit_time\n1,1732601580000,1732239754684\n"
READ_TWICE = (
    "not a regular file; an instance file is read twice (once to validate it, once to plan)"
)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_an_instance_file_that_is_a_fifo_is_refused_not_waited_on(
    tmp_path: Path, cli: Cli, command: str
) -> None:
    # Validation would read what a writer sends, then planning would wait for another.
    os.mkfifo(tmp_path / "x.csv")
    instances_manifest(tmp_path, "x.csv")
    args = ["run", "m.toml", "--journal", "j"] if command == "run" else ["plan", "m.toml"]
    # Port 9 (discard): nothing listens, and nothing may be sent anyway.
    out = cli(*args, url="http://127.0.0.1:9", timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert 'm.toml: instances[0].file = "x.csv": is a named pipe, ' + READ_TWICE in out.stderr


def test_an_instance_file_linked_to_a_piped_stdin_is_refused(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "x.csv").symlink_to("/dev/stdin")
    instances_manifest(tmp_path, "x.csv")
    out = subprocess.run(
        [sys.executable, "-m", "bulkrerun", "plan", "m.toml"],
        input=GOOD_CSV,
        capture_output=True,
        text=True,
        env=cli.env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert 'instances[0].file = "x.csv": is a named pipe, ' + READ_TWICE in out.stderr


def test_an_instance_file_linked_to_a_regular_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text(GOOD_CSV)
    (tmp_path / "x.csv").symlink_to(tmp_path / "data.csv")
    (entry,) = load_manifest(instances_manifest(tmp_path, "x.csv")).entries
    assert isinstance(entry, InstancesEntry)
    assert entry.file == tmp_path / "data.csv"
    assert [i.job_id for i in iter_instances(entry)] == [1]


@pytest.mark.timeout(30)  # before the fix, opening the pipe waited for a writer
def test_iter_instances_refuses_a_file_swapped_for_a_fifo_after_validation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(GOOD_CSV)
    (entry,) = load_manifest(instances_manifest(tmp_path, "x.csv")).entries
    assert isinstance(entry, InstancesEntry)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ManifestError, match=r'x.csv": is a named pipe, not a regular file; '):
        list(iter_instances(entry))


# ---------------------------------------------------------------------------------------------
# Bad manifests
# ---------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    return sorted(
        path.name
        for path in CORPUS.iterdir()
        if path.suffix in (".toml", ".json") and path.name != "expected.toml"
    )


def test_corpus_is_large_and_fully_indexed() -> None:
    names = corpus()
    assert len(names) >= 30
    assert sorted(EXPECTED) == names, "every corpus manifest needs a line in expected.toml"


@pytest.mark.parametrize("name", corpus())
def test_corpus_manifest_is_refused_naming_file_entry_and_field(name: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(CORPUS / name)
    error = caught.value
    message = str(error)
    assert isinstance(error, BadInput)
    assert error.exit_code == 2
    for fragment in EXPECTED[name]:
        assert fragment in message
    for problem in error.problems:
        assert problem.startswith(f"{CORPUS / name}:"), problem
    # pydantic's own wording never reaches the user.
    assert "pydantic" not in message
    assert "Input should" not in message
    assert "For further information" not in message


def test_file_name_is_shown_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    problems = problems_of(Path("concurrent_300.toml"))
    assert problems == ["concurrent_300.toml: window[0].concurrent = 300: must be 1..128"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
version = 1

[defaults]
retry_location = "nowhere"
colour = "blue"

[[window]]
job_name = "a"
begin = 1732601580
end = "2024-11-26T20:00:00"
chunk = "2w"
concurrent = 0
jobs = [ { job_name = "b" } ]

[[instances]]
job_name = ""
batch = 2000
items = [ { job_id = 0, plan_time = 1732601580000, submit_time = 1732239754684 } ]

[[select]]
job_name = "c"
job_names = ["d"]
begin = 1732579200000
end = 1732579100000
status = "sleeping"
"""
    problems = problems_of(write(tmp_path, "many.toml", text))
    expected = [
        "defaults.retry_location",
        "defaults.colour: unknown key",
        "window[0].begin = 1732601580: looks like epoch seconds",
        "window[0].chunk",
        "window[0].concurrent = 0",
        "window[0].jobs[0].workspace_id: missing",
        "window[0].workspace: missing",
        "window[0].retry_task_version: missing",
        "instances[0].job_name",
        "instances[0].batch = 2000",
        "instances[0].items[0].job_id = 0",
        "select[0].status",
        "select[0].job_names: give job_name or job_names, not both",
        "select[0].end = 1732579100000: must be after begin",
    ]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert all(problem.startswith("many.toml: ") or "many.toml" in problem for problem in problems)
    # The broken default is reported once, not again as "missing" in every entry.
    assert not any("retry_location: missing" in problem for problem in problems)


def test_naive_begin_is_reported_when_end_is_wrong_too(tmp_path: Path) -> None:
    text = HEAD + '\n[[window]]\njob_name = "a"\nbegin = "2024-11-26T08:00:00"\nend = "nope"\n'
    problems = problems_of(write(tmp_path, "m.toml", text + 'chunk = "1h"\n'))
    assert len(problems) == 2
    assert any('window[0].end = "nope": is not a time' in problem for problem in problems)
    assert any(
        "window[0].begin" in problem and "no timezone is set" in problem for problem in problems
    )


def test_misspelt_default_is_reported_once_not_as_missing_in_every_entry(tmp_path: Path) -> None:
    window = (
        '\n[[window]]\njob_name = "a"\nbegin = 1732579200000\nend = 1732622400000\nchunk = "1h"\n'
    )
    text = f'version = 1\n\n[defaults]\nworkspace = "{WS}"\nretry_locaton = "errorNode"\n'
    problems = problems_of(write(tmp_path, "m.toml", text + window * 5))
    typo = [problem for problem in problems if "retry_location" in problem]
    assert len(typo) == 1
    assert "defaults.retry_locaton: unknown key (did you mean retry_location?)" in typo[0]
    # A field that is really missing is still reported in every entry that lacks it.
    missing = [problem for problem in problems if "retry_task_version: missing" in problem]
    assert len(missing) == 5


def test_misspelt_key_of_an_entry_is_not_also_reported_missing(tmp_path: Path) -> None:
    text = (
        f'version = 1\n\n[defaults]\nworkspace = "{WS}"\nretry_task_version = "original_version"\n'
        '\n[[window]]\njob_name = "a"\nretry_locaton = "errorNode"\nbegin = 1732579200000\n'
        'end = 1732622400000\nchunk = "1h"\n'
    )
    (problem,) = problems_of(write(tmp_path, "m.toml", text))
    assert "window[0].retry_locaton: unknown key (did you mean retry_location?)" in problem


def job_id_manifest(folder: Path, form: str, job_id: int) -> Path:
    """A manifest with one instance of ``job_id``, given in ``form``: an item of a TOML or
    JSON manifest, or a line of a CSV or JSONL instance file."""
    item = {"job_id": job_id, "plan_time": 1732601580000, "submit_time": 1732239754684}
    if form == "csv":
        (folder / "i.csv").write_text(
            "job_id,plan_time,submit_time\n" + ",".join(map(str, item.values())) + "\n"
        )
        return instances_manifest(folder, "i.csv")
    if form == "jsonl":
        (folder / "i.jsonl").write_text(json.dumps(item) + "\n")
        return instances_manifest(folder, "i.jsonl")
    inline = ", ".join(f"{key} = {value}" for key, value in item.items())
    text = HEAD + f'\n[[instances]]\njob_name = "p"\nitems = [ {{ {inline} }} ]\n'
    if form == "json":
        return write(folder, "m.json", json.dumps(tomllib.loads(text)))
    return write(folder, "m.toml", text)


@pytest.mark.parametrize("form", ["toml", "json", "csv", "jsonl"])
def test_job_id_is_at_most_a_signed_64_bit_long(tmp_path: Path, form: str) -> None:
    (entry,) = load_manifest(job_id_manifest(tmp_path, form, JOB_ID_MAX)).entries
    assert isinstance(entry, InstancesEntry)
    assert [i.job_id for i in iter_instances(entry)] == [2**63 - 1]
    (problem,) = problems_of(job_id_manifest(tmp_path, form, JOB_ID_MAX + 1))
    assert f"job_id = {2**63}: must be at most 9223372036854775807 (2**63 - 1" in problem


def test_a_number_too_long_to_read_in_the_manifest_is_a_problem(tmp_path: Path) -> None:
    text = HEAD + f'\n[[instances]]\njob_name = "p"\nitems = [ {{ job_id = {"9" * 5000} }} ]\n'
    (problem,) = problems_of(write(tmp_path, "m.toml", text))
    assert problem.startswith(f"{tmp_path / 'm.toml'}: ")
    assert "too long" in problem


DEEP = 100_000  # far past any recursion limit


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("m.toml", "version = 1\nx = " + "[" * DEEP + "]" * DEEP + "\n"),
        ("m.toml", "version = 1\nx = " + "{a = " * DEEP + "1" + "}" * DEEP + "\n"),
        ("m.json", '{"version": 1, "x": ' + "[" * DEEP + "]" * DEEP + "}"),
        ("m.json", '{"version": 1, "x": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"),
    ],
)
def test_a_manifest_nested_too_deeply_to_parse_is_a_problem_not_a_crash(
    tmp_path: Path, name: str, text: str
) -> None:
    (problem,) = problems_of(write(tmp_path, name, text))
    assert problem.startswith(f"{tmp_path / name}: is nested too deeply to read")
    assert "a manifest nests five levels at most" in problem


def test_no_depth_up_to_the_parsers_limit_is_a_crash(tmp_path: Path) -> None:
    # Just short of the depth at which the parser runs out of stack, what parsed ran out of
    # it further on (showing the value in a message). Where that is depends on how deep the
    # stack already is, so every depth up to the parser's limit is tried.
    (tmp_path / "x.jsonl").write_text("")
    jsonl = instances_manifest(tmp_path, "x.jsonl")
    for depth in range(1, 1001):
        nested = "[" * depth + "]" * depth
        (tmp_path / "x.jsonl").write_text(f'{{"job_id": {nested}}}\n')
        json_manifest = write(tmp_path, "m.json", f'{{"version": 1, "x": 1, "window": {nested}}}')
        for path in (jsonl, json_manifest):
            try:
                problems_of(path)
            except RecursionError:  # pragma: no cover - what the fix is about
                pytest.fail(f"{path.name} nested {depth} deep: RecursionError")


def test_a_manifest_nested_past_the_limit_is_named_where(tmp_path: Path) -> None:
    nested = "[" * 40 + "]" * 40
    (problem,) = problems_of(write(tmp_path, "m.json", f'{{"version": 1, "window": {nested}}}'))
    assert problem == (
        f"{tmp_path / 'm.json'}: window[0][0]...: nested more than 32 levels deep (arrays or "
        "tables within each other); a manifest nests five levels at most (itself, "
        "[[instances]], an entry, its items, one item)"
    )


def test_dotted_keys_nested_too_deep_are_named_where_they_start(tmp_path: Path) -> None:
    # TOML reads dotted keys without recursion; the value they build is deep all the same.
    text = HEAD + "\n[[window]]\njob_name." + ".".join(["a"] * 2000) + " = 1\n"
    (problem,) = problems_of(write(tmp_path, "m.toml", text))
    assert problem.startswith(f"{tmp_path / 'm.toml'}: window[0].job_name...: nested more than ")


@pytest.mark.parametrize("depth", [40, DEEP])
def test_a_jsonl_line_nested_too_deeply_is_a_problem_at_its_line(
    tmp_path: Path, depth: int
) -> None:
    good = '{"job_id": 1, "plan_time": 1732601580000, "submit_time": 1732239754684}\n'
    deep = '{"job_id": ' + "[" * depth + "]" * depth + "}\n"
    (tmp_path / "x.jsonl").write_text(good + deep)
    try:
        (problem,) = problems_of(instances_manifest(tmp_path, "x.jsonl"))
    except RecursionError:  # pragma: no cover - what the fix is about
        pytest.fail("RecursionError")
    assert "instances[0].file: x.jsonl:2: " in problem
    assert "nested" in problem and "each line must be one flat JSON object" in problem


def test_missing_manifest_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: no such file"]


# ---------------------------------------------------------------------------------------------
# The example configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["outage.toml", "backfill.toml"])
def test_example_configs_load_cleanly(name: str) -> None:
    manifest = load_manifest(CONFIGS / name)
    assert manifest.entries
    assert manifest.warnings == ()


def test_outage_config_reads_its_instance_file() -> None:
    manifest = load_manifest(CONFIGS / "outage.toml")
    kinds = {type(entry) for entry in manifest.entries}
    assert {InstancesEntry, SelectEntry} <= kinds
    assert any(path.endswith("failed.csv") for path in manifest.files)
