"""The planner: exact tiling of windows, content-derived ids, resume by unit, de-duplication,
the ``plan --json`` stream and flat memory."""

from __future__ import annotations

import io
import itertools
import json
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkrerun.chunk import Chunk, canonical_json, chunk_id, instance_unit_id
from bulkrerun.manifest import (
    Instance,
    InstancesEntry,
    Manifest,
    SelectEntry,
    WindowEntry,
    load_manifest,
)
from bulkrerun.outcome import DONE, Kind
from bulkrerun.planner import (
    Duplicate,
    Plan,
    SelectedInstance,
    first_places,
    plan,
    request_headers,
    request_path,
    summarize,
    window_times,
    write_json_lines,
)

WS = "62fbba734e634c5087656fc3ff7adf34"
T0 = 1732579200000  # 2024-11-26T08:00:00+08:00
HOUR = 3_600_000

names = st.text(min_size=1, max_size=12)


def window(**overrides: Any) -> WindowEntry:
    values: dict[str, Any] = {
        "label": "window[0]",
        "workspace": WS,
        "retry_location": "errorNode",
        "retry_task_version": "original_version",
        "job_name": "ods_orders",
        "begin_ms": T0,
        "end_ms": T0 + 12 * HOUR,
        "chunk_ms": HOUR,
    }
    values.update(overrides)
    return WindowEntry(**values)


def instances(items: list[tuple[int, int, int]], **overrides: Any) -> InstancesEntry:
    values: dict[str, Any] = {
        "label": "instances[0]",
        "workspace": WS,
        "retry_location": "errorNode",
        "retry_task_version": "original_version",
        "job_name": "ods_payments",
        "batch": 100,
        "items": tuple(Instance(*item) for item in items),
    }
    values.update(overrides)
    return InstancesEntry(**values)


def select(**overrides: Any) -> SelectEntry:
    values: dict[str, Any] = {
        "label": "select[0]",
        "workspace": WS,
        "retry_location": "errorNode",
        "retry_task_version": "original_version",
        "job_names": ("a", "b"),
        "begin_ms": T0,
        "end_ms": T0 + HOUR,
        "batch": 2,
    }
    values.update(overrides)
    return SelectEntry(**values)


def manifest_of(*entries: WindowEntry | InstancesEntry | SelectEntry) -> Manifest:
    return Manifest(path=Path("m.toml"), text="", sha256="", files={}, entries=entries)


def items_of(count: int, job_id: int = 1) -> list[tuple[int, int, int]]:
    return [(job_id, T0 + i, T0 - 1000) for i in range(count)]


def json_lines(chunks: Any, project_id: str | None = None) -> bytes:
    out = io.BytesIO()
    write_json_lines(chunks, project_id, out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Windows tile exactly
# ---------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    begin=st.integers(10**12, 2 * 10**12),
    length=st.integers(1, 10**10),
    chunk=st.integers(1, 10**10),
)
def test_window_chunks_tile_the_window(begin: int, length: int, chunk: int) -> None:
    chunk = max(chunk, length // 500)  # keep the plan small enough to check every chunk
    entry = window(begin_ms=begin, end_ms=begin + length, chunk_ms=chunk)
    bodies = [c.body_object() for c in plan(manifest_of(entry))]

    assert len(bodies) == -(-length // chunk)
    assert bodies[0]["begin_time"] == begin
    assert bodies[-1]["end_time"] == begin + length - 1
    for k, body in enumerate(bodies):
        assert body["begin_time"] == begin + k * chunk  # cut at begin + k*chunk
        assert body["begin_time"] <= body["end_time"]
    for this, following in itertools.pairwise(bodies):
        assert this["end_time"] == following["begin_time"] - 1  # no gap, no overlap

    (summary,) = summarize(manifest_of(entry))
    assert summary.requests == summary.units == len(bodies)
    assert summary.first is not None
    assert summary.last is not None
    assert summary.first.body_object() == bodies[0]
    assert summary.last.body_object() == bodies[-1]


@settings(max_examples=200, deadline=None)
@given(
    job_name=names,
    workspace=names,
    node_name=st.none() | names,
    concurrent=st.integers(1, 128),
    ignore=st.booleans(),
    retry_location=st.sampled_from(["firstNode", "errorNode", "specifiedNode"]),
    jobs=st.lists(st.tuples(names, names), max_size=3),
    begin=st.integers(10**12, 2 * 10**12),
    chunks=st.integers(1, 4),
)
def test_window_template_equals_canonical_json(
    job_name: str,
    workspace: str,
    node_name: str | None,
    concurrent: int,
    ignore: bool,
    retry_location: str,
    jobs: list[tuple[str, str]],
    begin: int,
    chunks: int,
) -> None:
    entry = window(
        job_name=job_name,
        workspace=workspace,
        node_name=node_name,
        concurrent=concurrent,
        ignore_obs_monitor=ignore,
        retry_location=retry_location,
        jobs=tuple(jobs),
        begin_ms=begin,
        end_ms=begin + chunks * HOUR - 7,
    )
    produced = list(plan(manifest_of(entry)))
    assert len(produced) == chunks
    for k, chunk in enumerate(produced):
        # The reference body, written out independently of the planner's templates.
        expected: dict[str, Any] = {
            "retry_location": retry_location,
            "retry_task_version": "original_version",
            "ignore_obs_monitor": ignore,
            "begin_time": begin + k * HOUR,
            "end_time": min(begin + (k + 1) * HOUR, begin + chunks * HOUR - 7) - 1,
            "concurrent": concurrent,
        }
        if node_name is not None:
            expected["node_name"] = node_name
        if jobs:
            expected["jobs"] = [{"job_name": n, "workspace_id": w} for n, w in jobs]
        assert chunk.body == canonical_json(expected)
        assert chunk.id == chunk_id(job_name, workspace, chunk.body)
        assert chunk.units == (chunk.id,)
        assert window_times(chunk.body) == (expected["begin_time"], expected["end_time"])
        assert (chunk.kind, chunk.entry, chunk.job_name, chunk.workspace) == (
            "window",
            "window[0]",
            job_name,
            workspace,
        )
    # The fast `plan --json` path renders the same bytes as the chunks themselves.
    assert json_lines(plan(manifest_of(entry)), "p") == json_lines(produced, "p")


def test_window_times_of_a_body_the_templates_did_not_render_are_parsed() -> None:
    assert window_times(b'{"begin_time":1,"end_time":2}') == (1, 2)
    assert window_times(b'{"begin_time":1,"concurrent":8,"end_time":2}') == (1, 2)


@settings(max_examples=200, deadline=None)
@given(
    job_name=names,
    node_name=st.none() | names,
    ignore=st.booleans(),
    numbers=st.lists(
        st.tuples(
            st.integers(1, 2**40), st.integers(10**12, 10**13 - 1), st.integers(10**12, 10**13 - 1)
        ),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    batch=st.integers(1, 5),
)
def test_instance_batches_equal_canonical_json(
    job_name: str,
    node_name: str | None,
    ignore: bool,
    numbers: list[tuple[int, int, int]],
    batch: int,
) -> None:
    entry = instances(
        numbers, job_name=job_name, node_name=node_name, ignore_obs_monitor=ignore, batch=batch
    )
    produced = list(plan(manifest_of(entry)))
    assert len(produced) == -(-len(numbers) // batch)
    for k, chunk in enumerate(produced):
        part = numbers[k * batch : (k + 1) * batch]
        expected: dict[str, Any] = {
            "retry_location": "errorNode",
            "retry_task_version": "original_version",
            "ignore_obs_monitor": ignore,
            "task_retrys": [{"job_id": j, "plan_time": p, "submit_time": s} for j, p, s in part],
        }
        if node_name is not None:
            expected["node_name"] = node_name
        assert chunk.body == canonical_json(expected)
        assert chunk.id == chunk_id(job_name, WS, chunk.body)
        assert chunk.units == tuple(instance_unit_id(job_name, *n) for n in part)
        assert chunk.kind == "instances"
    assert json_lines(plan(manifest_of(entry))) == json_lines(produced)


# ---------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------


def test_ids_are_pinned() -> None:
    """Ids are what resume keys on: a change here strands every journal ever written."""
    (first, *_) = plan(manifest_of(window(jobs=(("dwd_orders", WS),), concurrent=8)))
    assert first.id == chunk_id("ods_orders", WS, first.body)
    assert first.id == "a6d2612363ebf3d8b9464d9bc4e87d57"
    (batch,) = plan(manifest_of(instances([(917567, 1732601580000, 1732239754684)])))
    assert batch.units == (instance_unit_id("ods_payments", 917567, 1732601580000, 1732239754684),)


BASE = f"""\
version = 1

[defaults]
workspace = "{WS}"
retry_location = "errorNode"
retry_task_version = "original_version"
"""
WINDOW_A = """
[[window]]
job_name = "a"
begin = 1732579200000
end = 1732622400000
chunk = "1h"
concurrent = 8
"""
INSTANCES_B = """
[[instances]]
job_name = "b"
batch = 2
items = [
  { job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 },
  { job_id = 2, plan_time = 1732601580000, submit_time = 1732239754684 },
  { job_id = 3, plan_time = 1732601580000, submit_time = 1732239754684 },
]
"""
WINDOW_C = """
[[window]]
job_name = "c"
begin = 1732579200000
end = 1732600000000
chunk = "30m"
"""


def ids_by_job(tmp_path: Path, text: str) -> dict[str, list[str]]:
    path = tmp_path / "m.toml"
    path.write_text(text)
    found: dict[str, list[str]] = {}
    for chunk in plan(load_manifest(path)):
        found.setdefault(chunk.job_name, []).append(chunk.id)
    return found


def test_ids_are_stable_across_runs_and_unrelated_edits(tmp_path: Path) -> None:
    original = ids_by_job(tmp_path, BASE + WINDOW_A + INSTANCES_B)
    assert original == ids_by_job(tmp_path, BASE + WINDOW_A + INSTANCES_B)
    # An entry added before the others (window[0] becomes window[1]), and another order.
    edited = ids_by_job(tmp_path, BASE + WINDOW_C + INSTANCES_B + WINDOW_A)
    assert edited["a"] == original["a"]
    assert edited["b"] == original["b"]
    assert len(edited["c"]) == 12


def test_ids_do_not_depend_on_the_project(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(BASE + WINDOW_A + INSTANCES_B)
    manifest = load_manifest(path)
    without = [json.loads(line) for line in json_lines(plan(manifest)).splitlines()]
    with_project = [json.loads(line) for line in json_lines(plan(manifest), "p1").splitlines()]
    assert [line["id"] for line in without] == [line["id"] for line in with_project]
    assert without[0]["path"] == "/v2/{project_id}/factory/jobs/a/instances/retry"
    assert with_project[0]["path"] == "/v2/p1/factory/jobs/a/instances/retry"


@pytest.mark.parametrize(
    "change",
    [
        {"concurrent": 4},
        {"retry_location": "firstNode"},
        {"retry_task_version": "current_version"},
        {"ignore_obs_monitor": False},
        {"node_name": "n1"},
        {"jobs": (("d", WS),)},
        {"workspace": "other"},
        {"job_name": "renamed"},
    ],
)
def test_any_body_change_changes_every_window_id(change: dict[str, Any]) -> None:
    before = [c.id for c in plan(manifest_of(window()))]
    after = [c.id for c in plan(manifest_of(window(**change)))]
    assert len(before) == len(after) == 12
    assert not set(before) & set(after)


def test_a_body_change_changes_batch_ids_but_not_instance_units() -> None:
    numbers = items_of(5)
    before = list(plan(manifest_of(instances(numbers))))
    after = list(plan(manifest_of(instances(numbers, retry_location="firstNode"))))
    assert [c.id for c in before] != [c.id for c in after]
    assert [c.units for c in before] == [c.units for c in after]


# ---------------------------------------------------------------------------------------------
# Resume and duplicates
# ---------------------------------------------------------------------------------------------


def test_skip_reforms_batches() -> None:
    numbers = items_of(10)
    entry = instances(numbers, batch=3)
    units = [instance_unit_id("ods_payments", *n) for n in numbers]
    done = {units[1], units[4]}

    chunks = list(plan(manifest_of(entry), skip=done.__contains__))

    sent = [[item["plan_time"] - T0 for item in c.body_object()["task_retrys"]] for c in chunks]
    assert sent == [[0, 2, 3], [5, 6, 7], [8, 9]]
    assert [u for c in chunks for u in c.units] == [u for u in units if u not in done]


def test_skip_asks_windows_by_chunk_id() -> None:
    all_chunks = list(plan(manifest_of(window())))
    done = {all_chunks[0].id, all_chunks[5].id}
    asked: list[str] = []

    def skip(unit: str) -> bool:
        asked.append(unit)
        return unit in done

    left = list(plan(manifest_of(window()), skip=skip))
    assert asked == [c.id for c in all_chunks]
    assert [c.id for c in left] == [c.id for c in all_chunks if c.id not in done]
    # The same through the fast `plan --json` path.
    assert json_lines(plan(manifest_of(window()), skip=done.__contains__)) == json_lines(left)


def test_duplicate_instances_are_sent_once_and_reported() -> None:
    numbers = items_of(3)
    first = instances([*numbers, numbers[0]], batch=2)
    second = instances([numbers[1], (9, T0, T0)], label="instances[1]")
    reported: list[Duplicate] = []

    chunks = list(plan(manifest_of(first, second), on_duplicate=reported.append))

    units = [u for c in chunks for u in c.units]
    assert len(units) == len(set(units)) == 4
    # Each repeat where it is, as a manifest error names a place, and what it is.
    assert reported == [
        Duplicate(
            instance_unit_id("ods_payments", *numbers[0]),
            "instances[0]",
            "instances[0].items[3]",
            "ods_payments",
            *numbers[0],
        ),
        Duplicate(
            instance_unit_id("ods_payments", *numbers[1]),
            "instances[1]",
            "instances[1].items[0]",
            "ods_payments",
            *numbers[1],
        ),
    ]
    summaries = summarize(manifest_of(first, second))
    assert [(s.requests, s.units, s.duplicates) for s in summaries] == [(2, 3, 1), (1, 1, 1)]


def test_identical_windows_are_sent_once() -> None:
    one = window(end_ms=T0 + 4 * HOUR)
    again = window(label="window[1]", begin_ms=T0 + 2 * HOUR, end_ms=T0 + 6 * HOUR)
    other = window(label="window[2]", concurrent=3, end_ms=T0 + 4 * HOUR)  # another body
    reported: list[Duplicate] = []

    chunks = list(plan(manifest_of(one, again, other), on_duplicate=reported.append))

    assert [c.entry for c in chunks].count("window[0]") == 4
    assert [c.entry for c in chunks].count("window[1]") == 2  # its first two were window[0]'s
    assert [c.entry for c in chunks].count("window[2]") == 4
    assert [(d.where, d.job_name, d.begin_time, d.end_time) for d in reported] == [
        ("window[1]", "ods_orders", T0 + 2 * HOUR, T0 + 3 * HOUR - 1),
        ("window[1]", "ods_orders", T0 + 3 * HOUR, T0 + 4 * HOUR - 1),
    ]
    lines = json_lines(plan(manifest_of(one, again, other)))
    assert lines == json_lines(chunks)
    summaries = summarize(manifest_of(one, again, other))
    assert [(s.requests, s.duplicates) for s in summaries] == [(4, 0), (2, 2), (4, 0)]


def test_duplicates_are_found_even_when_skipped() -> None:
    numbers = items_of(2)
    entry = instances([*numbers, *numbers])
    reported: list[Duplicate] = []
    chunks = list(plan(manifest_of(entry), skip=lambda _u: True, on_duplicate=reported.append))
    assert chunks == []
    assert len(reported) == 2


def test_the_first_occurrence_of_each_duplicate_is_found_where_it_is() -> None:
    # A warning named the repeat only ("planned earlier in the manifest too").
    numbers = items_of(3)
    found = [SelectedInstance("ods_payments", *numbers[2]), SelectedInstance("a", 7, T0, T0)]
    entries = (
        window(end_ms=T0 + 4 * HOUR),
        select(job_names=("ods_payments", "a")),
        instances([numbers[0], numbers[1], numbers[0]], label="instances[1]"),
        window(label="window[1]", begin_ms=T0 + 3 * HOUR, end_ms=T0 + 5 * HOUR),
        instances([numbers[2], numbers[1]], label="instances[2]"),
    )
    manifest = manifest_of(*entries)
    selections = {"select[0]": found}
    reported: list[Duplicate] = []
    list(plan(manifest, selections=selections, on_duplicate=reported.append))
    assert [d.where for d in reported] == [
        "instances[1].items[2]",
        "window[1]",
        "instances[2].items[0]",
        "instances[2].items[1]",
    ]
    firsts = first_places(manifest, reported, selections)
    assert [firsts[d.unit] for d in reported] == [
        "instances[1].items[0]",
        "window[0]",
        "select[0] (found by the instance list)",
        "instances[1].items[1]",
    ]
    assert first_places(manifest, []) == {}


def test_a_single_window_remembers_nothing() -> None:
    """O(1) memory: no set of seen ids for a window nothing can repeat."""
    entry = window(end_ms=T0 + 50_000 * 1000, chunk_ms=1000)
    stream = plan(manifest_of(entry))
    tracemalloc.start()
    try:
        count = sum(1 for _ in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < 256 * 1024


def test_json_stream_memory_is_flat() -> None:
    class Sink(io.RawIOBase):
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.written += len(data)
            return len(data)

    entry = window(end_ms=T0 + 50_000 * 1000, chunk_ms=1000)
    sink = Sink()
    tracemalloc.start()
    try:
        count = write_json_lines(plan(manifest_of(entry)), None, sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert sink.written > 50_000 * 400
    assert peak < 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Select entries
# ---------------------------------------------------------------------------------------------


def test_select_groups_by_job_in_order_of_first_appearance() -> None:
    found = [
        SelectedInstance("b", 1, T0, T0 - 1),
        SelectedInstance("a", 2, T0, T0 - 1),
        SelectedInstance("b", 3, T0, T0 - 1),
        SelectedInstance("b", 4, T0, T0 - 1),
    ]
    chunks = list(plan(manifest_of(select()), selections={"select[0]": found}))
    assert [
        (c.job_name, [t["job_id"] for t in c.body_object()["task_retrys"]]) for c in chunks
    ] == [
        ("b", [1, 3]),
        ("b", [4]),
        ("a", [2]),
    ]
    assert all(c.kind == "select" and c.entry == "select[0]" for c in chunks)
    assert chunks[2].units == (instance_unit_id("a", 2, T0, T0 - 1),)


def test_select_without_selection_is_left_out() -> None:
    entries = (window(end_ms=T0 + HOUR), select())
    assert [c.kind for c in plan(manifest_of(*entries))] == ["window"]
    summary = summarize(manifest_of(*entries))[1]
    assert summary.needs_selection
    assert (summary.requests, summary.units, summary.first) == (0, 0, None)
    assert summary.job_name == "a,b"
    with_selection = summarize(
        manifest_of(*entries), selections={"select[0]": [SelectedInstance("a", 1, T0, T0)]}
    )[1]
    assert not with_selection.needs_selection
    assert (with_selection.requests, with_selection.units) == (1, 1)


# ---------------------------------------------------------------------------------------------
# The request around the body, and `plan --json`
# ---------------------------------------------------------------------------------------------


def test_request_path_encodes_the_job_name_as_one_segment() -> None:
    assert request_path("p1", "ods_orders") == "/v2/p1/factory/jobs/ods_orders/instances/retry"
    assert request_path(None, "a b/c%d?") == (
        "/v2/{project_id}/factory/jobs/a%20b%2Fc%25d%3F/instances/retry"
    )
    assert request_path("", "a") == "/v2/{project_id}/factory/jobs/a/instances/retry"
    assert request_path("p1", "订单") == "/v2/p1/factory/jobs/%E8%AE%A2%E5%8D%95/instances/retry"


def test_request_headers() -> None:
    assert request_headers(WS, None) == {
        "Content-Type": "application/json;charset=UTF-8",
        "workspace": WS,
    }
    assert request_headers(WS, "p1")["X-Project-Id"] == "p1"
    assert "X-Project-Id" not in request_headers(WS, "")


def test_json_lines_describe_each_request() -> None:
    entries = (
        window(job_name="a b%", end_ms=T0 + 2 * HOUR),
        instances(items_of(3), batch=2, workspace="w2"),
    )
    chunks = list(plan(manifest_of(*entries)))
    out = io.BytesIO()
    assert write_json_lines(plan(manifest_of(*entries)), "p1", out) == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 4
    for line, chunk in zip(lines, chunks, strict=True):
        assert list(line) == ["id", "method", "path", "headers", "body"]
        assert line["id"] == chunk.id
        assert line["method"] == "POST"
        assert line["path"] == request_path("p1", chunk.job_name)
        assert line["headers"] == request_headers(chunk.workspace, "p1")
        assert line["body"] == chunk.body_object()
        assert not {"Authorization", "X-Auth-Token", "X-Security-Token"} & set(line["headers"])
    assert lines[0]["path"] == "/v2/p1/factory/jobs/a%20b%25/instances/retry"


def test_a_started_plan_falls_back_to_chunks() -> None:
    stream = plan(manifest_of(window(end_ms=T0 + 3 * HOUR)))
    assert isinstance(stream, Plan)
    first = next(stream)
    rest = json_lines(stream)
    assert rest == json_lines(list(plan(manifest_of(window(end_ms=T0 + 3 * HOUR))))[1:])
    assert isinstance(first, Chunk)
    with pytest.raises(RuntimeError):
        stream.write_json_lines(None, io.BytesIO())


def test_instance_file_entries_stream_through_plan(tmp_path: Path) -> None:
    rows = "".join(f"{i},{T0 + i},{T0}\n" for i in range(1, 251))
    (tmp_path / "failed.csv").write_text("job_id,plan_time,submit_time\n" + rows)
    (tmp_path / "m.toml").write_text(
        BASE + '\n[[instances]]\njob_name = "p"\nbatch = 100\nfile = "failed.csv"\n'
    )
    manifest = load_manifest(tmp_path / "m.toml")
    chunks = list(plan(manifest))
    assert [len(c.units) for c in chunks] == [100, 100, 50]
    (summary,) = summarize(manifest)
    assert (summary.requests, summary.units) == (3, 250)
    assert summary.first == chunks[0]
    assert summary.last == chunks[-1]
    assert (summary.begin_ms, summary.end_ms) == (None, None)


def test_summary_of_a_huge_window_is_arithmetic() -> None:
    entry = window(end_ms=T0 + 10**12, chunk_ms=1000)  # a billion requests
    (summary,) = summarize(manifest_of(entry))
    assert summary.requests == 10**9
    assert summary.first is not None
    assert summary.last is not None
    assert summary.first.body_object()["begin_time"] == T0
    assert summary.last.body_object()["end_time"] == T0 + 10**12 - 1


# ---------------------------------------------------------------------------------------------
# Counting a fresh plan
# ---------------------------------------------------------------------------------------------


def mixed_manifest() -> tuple[Manifest, dict[str, list[SelectedInstance]]]:
    """Every kind of entry, with duplicates of both kinds: window[1] repeats two chunks of
    window[0], instances[3] repeats one of its instances, select[4] one of instances[3]'s."""
    numbers = items_of(3)
    entries = (
        window(end_ms=T0 + 4 * HOUR),
        window(label="window[1]", begin_ms=T0 + 2 * HOUR, end_ms=T0 + 6 * HOUR),
        window(label="window[2]", concurrent=3, end_ms=T0 + 5 * HOUR + 1),  # a short last one
        instances([*numbers, numbers[0]], batch=2, label="instances[3]"),
        select(label="select[4]", job_names=("ods_payments", "b")),
    )
    found = [SelectedInstance("ods_payments", *numbers[1]), SelectedInstance("b", 7, T0, T0)]
    return manifest_of(*entries), {"select[4]": found}


def test_counting_a_plan_gives_what_iterating_it_gives() -> None:
    m, selections = mixed_manifest()
    counted: list[Duplicate] = []
    iterated: list[Duplicate] = []

    n = plan(m, selections=selections, on_duplicate=counted.append).count_units()
    chunks = list(plan(m, selections=selections, on_duplicate=iterated.append))

    assert n == sum(len(c.units) for c in chunks) == 4 + 2 + 6 + 3 + 1
    assert counted == iterated
    places = [d.where for d in counted]
    assert places == ["window[1]", "window[1]", "instances[3].items[3]", "select[4]"]


def test_counting_a_huge_window_cuts_no_chunk() -> None:
    entry = window(end_ms=T0 + 10**12, chunk_ms=1000)  # a billion requests: arithmetic or never
    assert plan(manifest_of(entry)).count_units() == 10**9


def test_counting_with_skip_leaves_out_what_it_skips() -> None:
    m = manifest_of(window(end_ms=T0 + 4 * HOUR), instances(items_of(3)))
    sent = list(plan(m))
    skipped = {sent[0].id, sent[-1].units[1]}
    assert plan(m, skip=skipped.__contains__).count_units() == 4 + 3 - 2


def test_a_counted_plan_cannot_be_iterated_or_counted_again() -> None:
    stream = plan(manifest_of(window()))
    next(stream)
    with pytest.raises(RuntimeError):
        stream.count_units()
    counted = plan(manifest_of(window()))
    assert counted.count_units() == 12
    assert list(counted) == []


def test_entries_are_frozen() -> None:
    entry = window()
    assert replace(entry, concurrent=2).concurrent == 2
    with pytest.raises(AttributeError):
        entry.concurrent = 2  # type: ignore[misc]


def test_a_planned_chunk_and_its_outcome_cannot_be_changed() -> None:
    # Named tuples since they are made per request: as immutable as the frozen dataclasses
    # they replaced. The journal and the engine share one chunk per request and the outcome
    # constants (DONE, INTERRUPTED) across requests.
    chunk = next(plan(manifest_of(window())))
    with pytest.raises(AttributeError):
        chunk.body = b"{}"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        DONE.kind = Kind.FAILED  # type: ignore[misc]
    assert DONE.kind is Kind.DONE and chunk.body == canonical_json(chunk.body_object())
