"""``[[select]]``: the instance-list client (paced, retried, paginated) and selections for a
run, against the fake service on loopback (real sockets) and a tiny in-process transport for
the cases the fake cannot produce."""

from __future__ import annotations

import dataclasses
import itertools
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bulkrerun.clock import FakeClock
from bulkrerun.errors import AuthRefused, BadInput, Fatal, ManifestError
from bulkrerun.fake import Catalog, FakeConfig, FakeServer, JobSpec, Outage
from bulkrerun.fake.catalog import Instances
from bulkrerun.fake.validate import ListQuery
from bulkrerun.journal import Binding, Journal, RunInfo, read_state
from bulkrerun.manifest import Manifest, SelectEntry, load_manifest
from bulkrerun.outcome import Kind, Outcome
from bulkrerun.pacing import Pacer, PacingConfig
from bulkrerun.planner import SelectedInstance, plan
from bulkrerun.report import not_sent_by_manifest
from bulkrerun.select import (
    LIST_LIMIT,
    LIST_READS,
    InstanceLister,
    ListFailed,
    list_path,
    query_selections,
    same_selection,
    select_entry,
    selections_for_run,
)
from bulkrerun.selection import FoundInstances
from bulkrerun.signing import AkSk
from bulkrerun.transport import Auth, HttpTransport

pytestmark = pytest.mark.anyio

WS = "62fbba734e634c5087656fc3ff7adf34"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ANCHOR = 1_732_622_400_000  # 2024-11-26T20:00:00+08:00, the demo's "now" (cli.DEMO_ANCHOR_MS)
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
OUTAGE = (ANCHOR - 22 * HOUR, ANCHOR - 12 * HOUR)  # the demo catalog's outage
DEMO_JOBS = [job.name for job in Catalog.demo(ANCHOR).jobs]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pacer(**overrides: Any) -> Pacer:
    fields: dict[str, Any] = {"rate": 1000.0, "burst": 1}
    fields.update(overrides)
    return Pacer(PacingConfig(**fields))


@asynccontextmanager
async def service(
    config: FakeConfig | None = None, auth: Auth | None = None
) -> AsyncIterator[tuple[FakeServer, HttpTransport]]:
    config = config or FakeConfig(catalog=Catalog.demo(ANCHOR))
    async with (
        FakeServer(config) as srv,
        HttpTransport(endpoint=srv.url, project_id=PROJECT, auth=auth or Auth()) as transport,
    ):
        yield srv, transport


def select(
    job_names: tuple[str, ...] = tuple(DEMO_JOBS),
    begin: int = OUTAGE[0],
    end: int = OUTAGE[1],
    statuses: tuple[str, ...] = ("fail", "running-exception"),
    label: str = "select[0]",
) -> SelectEntry:
    return SelectEntry(
        label=label,
        workspace=WS,
        retry_location="errorNode",
        retry_task_version="original_version",
        job_names=job_names,
        begin_ms=begin,
        end_ms=end,
        statuses=statuses,
    )


def write_manifest(path: Path, select_body: str, extra: str = "") -> Path:
    path.write_text(
        "version = 1\n[defaults]\n"
        f'workspace = "{WS}"\nretry_location = "errorNode"\n'
        'retry_task_version = "original_version"\ntimezone = "Asia/Shanghai"\n'
        f"{extra}\n[[select]]\n{select_body}",
        encoding="utf-8",
    )
    return path


OUTAGE_SELECT = (
    'job_names = ["ods_orders", "ods_users"]\n'
    'begin = "2024-11-25T22:00:00"\nend = "2024-11-26T08:00:00"\n'
)


# -- the list client ----------------------------------------------------------------------------


def test_list_path_encodes_the_job_as_one_segment() -> None:
    assert list_path("p1", "a b/ç") == "/v2/p1/factory/jobs/a%20b%2F%C3%A7/instances/detail"


async def test_the_outage_is_found_per_job_and_status() -> None:
    notes: list[str] = []
    async with service() as (srv, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        found = await select_entry(select(), lister, manifest_name="m.toml", on_note=notes.append)
        truth = srv.instances
        assert truth is not None
        # Every instance is the catalog's, exactly as the list shows it (mode A needs these).
        for item in found[:5]:
            shown = truth.instance(item.job_name, item.plan_time)
            assert shown is not None
            assert (shown["job_id"], shown["submit_time"], shown["status"]) == (
                item.job_id,
                item.submit_time,
                "fail",
            )
    # 6 jobs every 15 minutes and 6 hourly over the 10 hours of the outage.
    assert len(found) == 6 * 40 + 6 * 10 == 300
    assert len(set(found)) == 300
    assert [i.job_name for i in found[:40]] == ["ods_orders"] * 40
    assert [i.plan_time for i in found[:40]] == sorted(i.plan_time for i in found[:40])
    assert all(OUTAGE[0] <= i.plan_time < OUTAGE[1] for i in found)
    (note,) = notes
    assert note.startswith("select[0]: found 300 instances with status fail or running-exception")
    assert "  ods_orders: 40 fail" in note.splitlines()
    assert "  ods_users: 10 fail" in note.splitlines()
    # One GET per job, whatever the statuses (picked from the answer): one page each.
    assert lister.gets == len(DEMO_JOBS)


async def test_the_window_end_is_exclusive_and_other_statuses_are_left_out() -> None:
    begin, end = OUTAGE[0] - 2 * HOUR, OUTAGE[0] + HOUR  # two good hours, one failed
    async with service() as (_, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        failed = await select_entry(
            select(("ods_users",), begin, end, ("fail",)), lister, manifest_name="m", on_note=print
        )
        good = await select_entry(
            select(("ods_users",), begin, end, ("success",)),
            lister,
            manifest_name="m",
            on_note=print,
        )
    assert [i.plan_time for i in failed] == [OUTAGE[0]]  # end (OUTAGE[0] + 1 h) excluded
    assert [i.plan_time for i in good] == [begin, begin + HOUR]


async def test_more_than_a_thousand_instances_are_read_page_by_page() -> None:
    minute_job = JobSpec("ods_clicks", 4242, period_min=1)
    catalog = Catalog(
        jobs=(minute_job,),
        start_ms=ANCHOR - 3 * DAY,
        now_ms=ANCHOR,
        outage=Outage(ANCHOR - 2 * DAY, ANCHOR - 2 * DAY + 2_500 * 60_000),
    )
    async with service(FakeConfig(catalog=catalog)) as (srv, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        found = await select_entry(
            select(("ods_clicks",), ANCHOR - 3 * DAY, ANCHOR, ("fail",)),
            lister,
            manifest_name="m",
            on_note=lambda _: None,
        )
        # The whole window is read, not only its failed instances: 4,320 minutes in 3 days.
        assert srv.stats.requests == 5
    assert len(found) == 2_500
    assert len({i.plan_time for i in found}) == 2_500
    assert found[0].plan_time == ANCHOR - 2 * DAY
    assert found[-1].plan_time == ANCHOR - 2 * DAY + 2_499 * 60_000
    assert LIST_LIMIT == 1000


async def test_a_window_longer_than_the_api_reaches_is_refused_before_any_request() -> None:
    async with service() as (srv, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        with pytest.raises(ManifestError) as info:
            await select_entry(
                select(begin=ANCHOR - 32 * DAY, end=ANCHOR),
                lister,
                manifest_name="outage.toml",
                on_note=print,
            )
        assert srv.stats.requests == 0
    message = str(info.value)
    assert "outage.toml: select[0]" in message
    assert "32.0 days" in message
    assert "one month" in message


async def test_a_window_further_back_than_a_month_is_refused_with_a_clear_message() -> None:
    async with service() as (srv, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        with pytest.raises(BadInput) as info:
            await select_entry(
                select(("ods_orders",), ANCHOR - 40 * DAY, ANCHOR - 39 * DAY, ("fail",)),
                lister,
                manifest_name="outage.toml",
                on_note=print,
            )
        assert srv.stats.by_code["DLF.0104"] == 1  # asked once: a refusal is not retried
    message = str(info.value)
    assert message.startswith("outage.toml: select[0]: the service refused")
    assert "ods_orders" in message
    assert "DLF.0104" in message
    assert "at most one month back" in message
    assert "Nothing was sent" in message
    assert info.value.exit_code == 2


async def test_an_unknown_job_is_bad_input_naming_entry_and_job() -> None:
    async with service() as (_, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        with pytest.raises(BadInput, match=r"select\[0\].*ods_nope.*DLF\.1000.*job name"):
            await select_entry(
                select(("ods_orders", "ods_nope")), lister, manifest_name="m", on_note=print
            )


async def test_a_list_refused_by_a_gateway_that_knows_no_such_api_blames_the_endpoint() -> None:
    async with (
        FakeServer(FakeConfig(catalog=Catalog.demo(ANCHOR))) as srv,
        HttpTransport(endpoint=srv.url + "/x", project_id=PROJECT, auth=Auth()) as transport,
    ):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        with pytest.raises(BadInput, match=r"APIG\.0101.*the endpoint looks wrong") as raised:
            await select_entry(select(), lister, manifest_name="m", on_note=print)
    assert "check the entry" not in str(raised.value)


async def test_gets_are_retried_on_429_and_503_and_find_the_same() -> None:
    clean_config = FakeConfig(catalog=Catalog.demo(ANCHOR))
    faulty = dataclasses.replace(clean_config, p429=0.3, p5xx=0.3, seed=11)
    async with service(clean_config) as (_, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        expected = await select_entry(select(), lister, manifest_name="m", on_note=print)
    clock = FakeClock()
    shared = pacer(max_attempts=20)
    async with service(faulty) as (srv, transport):
        lister = InstanceLister(transport, pacer=shared, clock=clock)
        found = await select_entry(select(), lister, manifest_name="m", on_note=print)
        assert srv.stats.by_status[429] > 0
        assert srv.stats.by_status[503] > 0
        assert srv.stats.requests == lister.gets > len(DEMO_JOBS)
    assert found == expected
    # The shared pacer saw every attempt: throttles lowered its rate, retries were booked,
    # and the waits were slept on the injected clock (Retry-After: 1 s on each 429).
    stats = shared.stats(clock.now())
    assert stats.throttled == srv.stats.by_status[429]
    assert stats.retries == lister.gets - len(DEMO_JOBS)
    assert stats.decreases >= 1
    assert sum(clock.sleeps) >= srv.stats.by_status[429] * 1.0


class ScriptedTransport:
    """Answers GETs from a script of outcomes; records what was asked."""

    project_id = PROJECT

    def __init__(self, outcomes: list[Outcome], body: Any) -> None:
        self.outcomes = outcomes
        self.body = body
        self.asked: list[tuple[str, dict[str, str | int], str]] = []

    async def get_json(
        self, path: str, query: Mapping[str, str | int], workspace: str
    ) -> tuple[Outcome, Any]:
        self.asked.append((path, dict(query), workspace))
        outcome = self.outcomes.pop(0) if self.outcomes else Outcome(Kind.DONE, status=200)
        return outcome, self.body if outcome.kind is Kind.DONE else None


PAGE = {
    "total": 1,
    "instances": [
        {"job_name": "j", "job_id": "7", "plan_time": 1732601580000, "submit_time": 1732601590000,
         "status": "fail", "instance_type": 0},
    ],
}  # fmt: skip


async def test_a_held_get_is_retried_because_reading_changes_nothing() -> None:
    held = Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    server_error = Outcome(Kind.HELD, status=500, reason="server error")
    transport = ScriptedTransport([held, server_error], PAGE)
    shared = pacer()
    lister = InstanceLister(transport, pacer=shared, clock=FakeClock())
    items = await lister.list("j", WS, min_plan_time=1, max_plan_time=2)
    assert [(i.job_id, i.status) for i in items] == [(7, "fail")]  # "7" read as a number
    assert len(transport.asked) == 3
    assert shared.stats(0.0).retries == 2
    path, query, workspace = transport.asked[-1]
    assert path == f"/v2/{PROJECT}/factory/jobs/j/instances/detail"
    # Never a status filter: offset paging over a set that shrinks as instances are rerun
    # skips instances (see the tests of a changing world below).
    assert query == {"min_plan_time": 1, "max_plan_time": 2, "limit": 1000, "offset": 0}
    assert workspace == WS


async def test_a_read_without_an_answer_says_so_as_a_read_and_is_told_past_a_minute() -> None:
    """A list that answers nothing in time: the reason is a read's ("no answer in time"),
    not a rerun's ("unknown whether it ran"); and the caller's observer hears each try, so
    selection says, past a minute, what fails (as verify and the watch do)."""
    from bulkrerun.verify import ListTrouble

    held = Outcome(Kind.HELD, reason="timeout after sending: unknown whether it ran")
    transport = ScriptedTransport([held] * 30, PAGE)
    clock, said = FakeClock(), []
    observe = ListTrouble(None, selecting=True).observer(clock, said.append)
    lister = InstanceLister(
        transport, pacer=pacer(rate=0.2, max_attempts=40), clock=clock, on_outcome=observe
    )
    assert len(await lister.list("j", WS, min_plan_time=1, max_plan_time=2)) == 1
    assert said and said[0].startswith("select: the instance list has been failing for 1m")
    assert "last: no answer in time" in said[0] and "no rerun has been sent" in said[0]
    assert said[-1].startswith("select: the instance list answers again")


async def test_a_get_gives_up_after_the_attempts_allowed() -> None:
    unavailable = Outcome(Kind.RETRY, status=503, error_code="APIG.0202", reason="unavailable")
    transport = ScriptedTransport([unavailable] * 10, PAGE)
    lister = InstanceLister(transport, pacer=pacer(max_attempts=3), clock=FakeClock())
    with pytest.raises(ListFailed) as info:
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)
    assert len(transport.asked) == 3
    assert not info.value.refused
    assert isinstance(info.value, Fatal)
    assert "no answer after 3 attempts" in str(info.value)


async def test_a_get_allowed_one_attempt_says_1_attempt() -> None:
    unavailable = Outcome(Kind.RETRY, status=503, error_code="APIG.0202", reason="unavailable")
    transport = ScriptedTransport([unavailable], PAGE)
    lister = InstanceLister(transport, pacer=pacer(max_attempts=1), clock=FakeClock())
    with pytest.raises(ListFailed) as info:
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)
    assert "no answer after 1 attempt (last: 503 unavailable)" in str(info.value)


async def test_an_answer_that_is_not_an_instance_list_fails_clearly() -> None:
    transport = ScriptedTransport([], {"instances": "nope"})
    lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
    with pytest.raises(ListFailed, match="not an instance list"):
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", True),  # lax ints take it as 1: a rerun aimed at job 1
        ("job_id", -7),
        ("submit_time", -1),
        ("submit_time", 10**20),  # past a long
        ("plan_time", 99_999_999_999_999),  # the year 5138
        ("status", "success\x1b[2J\x1b]0;PWNED\x07"),  # would rewrite the terminal
        ("status", "running" + "x" * 1_000_000),
        ("job_name", "j\nFAKE LINE"),
    ],
)
async def test_an_instance_a_rerun_request_could_not_carry_makes_the_page_unreadable(
    field: str, value: object
) -> None:
    bad = {**PAGE, "instances": [{**PAGE["instances"][0], field: value}]}  # type: ignore[index]
    lister = InstanceLister(ScriptedTransport([], bad), pacer=pacer(), clock=FakeClock())
    with pytest.raises(ListFailed, match="not an instance list"):
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)


@pytest.mark.parametrize(
    "page",
    [
        {"total": 10**15, "instances": PAGE["instances"]},  # a list that never ends
        {"total": 1, "instances": [{}] * 1001},  # more than the 1,000 asked for
    ],
)
async def test_a_list_larger_than_any_window_is_refused_before_it_is_read(
    page: dict[str, object],
) -> None:
    transport = ScriptedTransport([], page)
    lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
    with pytest.raises(ListFailed, match="not an instance list"):
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)
    assert len(transport.asked) == 1  # one page, not page after page


async def test_a_service_that_ignores_offset_is_not_asked_forever_nor_believed() -> None:
    transport = ScriptedTransport([], {**PAGE, "total": 5000})
    lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
    with pytest.raises(ListFailed) as info:
        await lister.list("j", WS, min_plan_time=1, max_plan_time=2)
    # Each read stops at its second page, which brought nothing new; 1 of 5,000 instances is
    # not a selection, so after LIST_READS reads it fails instead of returning it.
    assert len(transport.asked) == 2 * LIST_READS
    assert [q["offset"] for _, q, _ in transport.asked] == [0, 1] * LIST_READS
    assert not info.value.refused
    assert "held 1 distinct instance of the 5,000 the service counted" in str(info.value)


async def test_refused_credentials_abort_with_auth_refused() -> None:
    config = FakeConfig(catalog=Catalog.demo(ANCHOR), ak="AK1", sk="right-secret")
    wrong = Auth(aksk=AkSk("AK1", "wrong-secret"))
    async with service(config, wrong) as (_, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        with pytest.raises(AuthRefused) as info:
            await lister.list("ods_orders", WS, min_plan_time=OUTAGE[0], max_plan_time=OUTAGE[1])
    assert "wrong-secret" not in str(info.value)
    assert info.value.exit_code == 3


async def test_signed_gets_are_accepted() -> None:
    config = FakeConfig(catalog=Catalog.demo(ANCHOR), ak="AK1", sk="right-secret")
    async with service(config, Auth(aksk=AkSk("AK1", "right-secret"))) as (_, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        items = await lister.list(
            "ods_orders", WS, min_plan_time=OUTAGE[0], max_plan_time=OUTAGE[1] - 1
        )
    assert [i.status for i in items] == ["fail"] * 40


async def test_gets_keep_to_the_shared_rate() -> None:
    clock = FakeClock()
    shared = pacer(rate=10.0)
    async with service() as (_, transport):
        lister = InstanceLister(transport, pacer=shared, clock=clock)
        start = clock.now()
        for job in DEMO_JOBS:
            await lister.list(job, WS, min_plan_time=OUTAGE[0], max_plan_time=OUTAGE[1] - 1)
    assert shared.stats(clock.now()).sends == len(DEMO_JOBS) == lister.gets
    # 12 GETs at 10/s: the last one leaves 1.1 s after the first, on the injected clock.
    assert clock.now() - start == pytest.approx((len(DEMO_JOBS) - 1) / 10.0, abs=0.01)


# -- a world that changes while it is listed ------------------------------------------------------
#
# What a correct selection is when statuses change mid-listing: each instance of the window is
# read once and selected if and only if the status it showed when read is one of the entry's.
# So an instance that has the status throughout the listing is always selected, one that never
# has it never is, and one that changes is judged by what it showed when its page was read.

Hook = Callable[["ChangingInstances", int], None]


class ChangingInstances(Instances):
    """The fake's live instances with someone else at work: ``before(self, n)`` runs just
    before the ``n``-th list query (from 0) is answered, i.e. between two pages."""

    __slots__ = ("before", "queries")

    def __init__(self, catalog: Catalog, clock: FakeClock, before: Hook) -> None:
        super().__init__(catalog, clock)
        self.before = before
        self.queries = 0

    def query(self, job_name: str, q: ListQuery) -> Any:
        self.before(self, self.queries)
        self.queries += 1
        return super().query(job_name, q)


@asynccontextmanager
async def changing(
    catalog: Catalog, before: Hook
) -> AsyncIterator[tuple[FakeServer, ChangingInstances, InstanceLister]]:
    # The server's clock stands still, so an instance rerun by "someone else" stays waiting.
    clock = FakeClock()
    async with service(FakeConfig(catalog=catalog, clock=clock)) as (srv, transport):
        world = ChangingInstances(catalog, clock, before)
        srv.instances = world
        yield srv, world, InstanceLister(transport, pacer=pacer(), clock=FakeClock())


CLICKS = JobSpec("ods_clicks", 4242, period_min=1)
FAILED_AT = ANCHOR - 2 * DAY  # 2,520 one-minute instances failed from here (as in the audit)


def clicks_catalog(**changes: Any) -> Catalog:
    fields: dict[str, Any] = {
        "jobs": (CLICKS,),
        "start_ms": ANCHOR - 3 * DAY,
        "now_ms": ANCHOR,
        "outage": Outage(FAILED_AT, FAILED_AT + 2_520 * MINUTE),
    }
    fields.update(changes)
    return Catalog(**fields)


def minutes(first: int, count: int) -> list[int]:
    return [first + k * MINUTE for k in range(count)]


async def test_instances_rerun_by_someone_else_between_pages_skip_none_that_still_fail() -> None:
    # The window: 100 good minutes, the 2,520 failed ones, 100 good ones: 2,720, three pages.
    begin, end = FAILED_AT - 100 * MINUTE, FAILED_AT + 2_620 * MINUTE
    failed = minutes(FAILED_AT, 2_520)
    read_then_rerun, rerun_then_read = failed[:300], failed[-300:]

    def someone_else(world: ChangingInstances, n: int) -> None:
        if n == 1:  # after the first page: they rerun 300 it showed and 300 it did not
            tasks = [(CLICKS.job_id, p, 0) for p in read_then_rerun + rerun_then_read]
            assert world.rerun_instances(CLICKS.name, tasks) is None

    notes: list[str] = []
    async with changing(clicks_catalog(), someone_else) as (srv, world, lister):
        originals = {p: world.instance(CLICKS.name, p) for p in failed}
        found = await select_entry(
            select((CLICKS.name,), begin, end, ("fail",)),
            lister,
            manifest_name="m",
            on_note=notes.append,
        )
        fail_at_end = {
            p for p in minutes(begin, 2_720) if world.instance(CLICKS.name, p)["status"] == "fail"
        }
    chosen = {i.plan_time for i in found}
    assert len(chosen) == len(found)
    # Every instance that failed before and still fails after the listing is selected (the
    # old status-filtered paging lost the 300 at failed[1000:1300] here)...
    assert fail_at_end == set(failed[300:-300])
    assert fail_at_end <= chosen
    # ...none that never failed, and none that was rerun before its page was read...
    assert chosen <= set(failed)
    assert not chosen & set(rerun_then_read)
    # ...and those read as failed, then rerun, as they were read: the original submit_time.
    assert set(read_then_rerun) <= chosen
    assert chosen == set(failed[:-300])
    for item in found[:300]:
        shown = originals[item.plan_time]
        assert shown is not None
        assert (item.job_id, item.submit_time) == (shown["job_id"], shown["submit_time"])
    assert notes[0].startswith("select[0]: found 2,220 instances with status fail")
    assert "  ods_clicks: 2,220 fail" in notes[0].splitlines()
    assert srv.stats.requests == 3  # one read of three pages: the window did not change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # The window reaches into the present: the scheduler plans 5 more minutes.
        (lambda c: dataclasses.replace(c, now_ms=c.now_ms + 5 * MINUTE), 2_505),
        # 5 instances at the window's start disappear (say, purged): the rest move up.
        (lambda c: dataclasses.replace(c, start_ms=ANCHOR - 2_495 * MINUTE), 2_495),
    ],
    ids=["instances-planned", "instances-removed"],
)
async def test_a_window_whose_total_changes_between_pages_is_read_again(
    change: Callable[[Catalog], Catalog], expected: int
) -> None:
    # Every instance fails, even those planned later; the window ends an hour in the future.
    catalog = clicks_catalog(
        start_ms=ANCHOR - 2 * DAY, outage=Outage(ANCHOR - 3 * DAY, ANCHOR + DAY)
    )
    begin, end = ANCHOR - 2_500 * MINUTE, ANCHOR + HOUR

    def scheduler(world: ChangingInstances, n: int) -> None:
        if n == 1:
            world.catalog = change(world.catalog)

    async with changing(catalog, scheduler) as (srv, world, lister):
        found = await select_entry(
            select((CLICKS.name,), begin, end, ("fail",)),
            lister,
            manifest_name="m",
            on_note=lambda _: None,
        )
        truth = [p for p in world.catalog.plan_times(CLICKS) if begin <= p < end]
    assert len(truth) == expected
    assert [i.plan_time for i in found] == truth  # each instance once, none skipped
    # The first read stopped at its second page, whose total differed; the second read was
    # consistent: 3 pages.
    assert srv.stats.requests == 2 + 3


async def test_a_window_that_keeps_changing_fails_clearly_after_a_few_reads() -> None:
    catalog = clicks_catalog(start_ms=ANCHOR - 2 * DAY)

    def busy_scheduler(world: ChangingInstances, n: int) -> None:
        if n % 2:  # every second page sees one more instance than the page before it
            world.catalog = dataclasses.replace(world.catalog, now_ms=world.catalog.now_ms + MINUTE)

    async with changing(catalog, busy_scheduler) as (srv, _, lister):
        with pytest.raises(ListFailed) as info:
            await select_entry(
                select((CLICKS.name,), ANCHOR - 2_500 * MINUTE, ANCHOR + HOUR, ("fail",)),
                lister,
                manifest_name="m",
                on_note=print,
            )
        assert srv.stats.requests == 2 * LIST_READS  # each read stopped at its second page
    exc = info.value
    assert isinstance(exc, Fatal)  # exit 3, not bad input: nothing is wrong with the entry
    assert exc.exit_code == 3
    assert not exc.refused
    message = str(exc)
    assert message.startswith("instance list of job ods_clicks: ")
    assert f"could not be read completely, {LIST_READS} times in a row" in message
    assert "2,502 instances, then 2,503 at offset 1,000" in message  # the last read's
    assert "end it in the past" in message


# -- selections for plan and run ------------------------------------------------------------------


def manifest_at(tmp_path: Path, body: str = OUTAGE_SELECT, name: str = "m.toml") -> Manifest:
    return load_manifest(write_manifest(tmp_path / name, body))


async def test_query_selections_covers_every_select_entry(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path / "m.toml",
        OUTAGE_SELECT
        + '\n[[select]]\njob_name = "dws_sales_hourly"\nbegin = "2024-11-26T06:00:00"\n'
        'end = "2024-11-26T10:00:00"\n',
    )
    notes: list[str] = []
    async with service() as (_, transport):
        found = await query_selections(
            load_manifest(path), transport, pacer=pacer(), clock=FakeClock(), on_note=notes.append
        )
    assert {label: len(v) for label, v in found.items()} == {"select[0]": 50, "select[1]": 2}
    assert len(notes) == 2


def open_journal(path: Path) -> Journal:
    return Journal.open(path, Binding(PROJECT, "http://fake"), tool_version="test")


def record_run(
    journal: Journal, manifest: Manifest, found: dict[str, list[SelectedInstance]]
) -> None:
    journal.begin_run(
        RunInfo(
            manifest_name=str(manifest.path),
            manifest_text=manifest.text,
            manifest_sha256=manifest.sha256,
            selections={
                label: [(i.job_name, i.job_id, i.plan_time, i.submit_time) for i in items]
                for label, items in found.items()
            },
        )
    )


async def test_a_resume_uses_the_recorded_selection_without_asking(tmp_path: Path) -> None:
    manifest = manifest_at(tmp_path)
    recorded = [SelectedInstance("ods_orders", 917560, OUTAGE[0], OUTAGE[0] + 5000)]
    with open_journal(tmp_path / "j") as journal:
        record_run(journal, manifest, {"select[0]": recorded})
    notes: list[str] = []
    with open_journal(tmp_path / "j") as journal:
        async with service() as (srv, transport):
            found = await selections_for_run(
                manifest,
                journal,
                transport,
                reselect=False,
                pacer=pacer(),
                clock=FakeClock(),
                on_note=notes.append,
            )
            assert srv.stats.requests == 0
    assert found == {"select[0]": recorded}
    assert notes == [
        "select[0]: 1 instance, the selection the journal recorded in run 1 (not asked "
        "again; --reselect asks the service again)"
    ]


async def test_reselect_asks_the_service_again(tmp_path: Path) -> None:
    manifest = manifest_at(tmp_path)
    with open_journal(tmp_path / "j") as journal:
        record_run(journal, manifest, {"select[0]": []})
        async with service() as (srv, transport):
            found = await selections_for_run(
                manifest,
                journal,
                transport,
                reselect=True,
                pacer=pacer(),
                clock=FakeClock(),
                on_note=lambda _: None,
            )
            assert srv.stats.requests == 2
    assert len(found["select[0]"]) == 50


async def test_a_changed_entry_is_queried_again_with_a_note(tmp_path: Path) -> None:
    old = manifest_at(tmp_path)
    with open_journal(tmp_path / "j") as journal:
        record_run(journal, old, {"select[0]": []})
    # Same label, another window: the recorded selection answers another question.
    new = manifest_at(tmp_path, OUTAGE_SELECT.replace("08:00:00", "07:00:00"))
    notes: list[str] = []
    with open_journal(tmp_path / "j") as journal:
        async with service() as (srv, transport):
            found = await selections_for_run(
                new,
                journal,
                transport,
                reselect=False,
                pacer=pacer(),
                clock=FakeClock(),
                on_note=notes.append,
            )
            assert srv.stats.requests == 2
    assert len(found["select[0]"]) == 45  # 36 + 9 in the 9 hours
    assert notes[0].startswith("select[0] changed since its selection was recorded")


def test_a_selection_is_the_same_question_whatever_else_changed(tmp_path: Path) -> None:
    old = manifest_at(tmp_path, OUTAGE_SELECT, "a.toml")
    run = recorded_run(tmp_path, old)
    # Other fields (batch, retry_location) and other entries do not change the question.
    also = OUTAGE_SELECT + 'batch = 7\nretry_location = "firstNode"\n'
    assert same_selection(run, manifest_at(tmp_path, also, "b.toml"), "select[0]")
    # A lone status string is the list of one; job_name is job_names of one.
    assert same_selection(
        recorded_run(
            tmp_path, manifest_at(tmp_path, OUTAGE_SELECT + 'status = "fail"\n', "c.toml")
        ),
        manifest_at(tmp_path, OUTAGE_SELECT + 'status = ["fail"]\n', "d.toml"),
        "select[0]",
    )
    # Jobs, statuses, window and workspace are the question.
    for changed in (
        OUTAGE_SELECT.replace('"ods_users"', '"ods_payments"'),
        OUTAGE_SELECT + 'status = ["fail", "running-exception"]\n',
        OUTAGE_SELECT.replace("22:00:00", "21:00:00"),
        OUTAGE_SELECT + 'workspace = "0e4f4c9ab2d84b1f9cf7a4d7c3b2a190"\n',
    ):
        assert not same_selection(run, manifest_at(tmp_path, changed, "e.toml"), "select[0]")
    # An entry that is not in the old manifest is new.
    assert not same_selection(run, manifest_at(tmp_path), "select[1]")


def recorded_run(tmp_path: Path, manifest: Manifest) -> Any:
    path = tmp_path / f"j-{manifest.path.name}"
    with open_journal(path) as journal:
        record_run(journal, manifest, {})
        return journal.state().runs[-1]


def test_json_manifests_are_compared_too(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "defaults": {"workspace": WS, "retry_location": "errorNode",
                     "retry_task_version": "original_version"},
        "select": [{"job_name": "ods_orders", "begin": OUTAGE[0], "end": OUTAGE[1]}],
    }  # fmt: skip
    a = tmp_path / "a.json"
    a.write_text(json.dumps(data), encoding="utf-8")
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data, indent=2), encoding="utf-8")
    run = recorded_run(tmp_path, load_manifest(a))
    assert same_selection(run, load_manifest(b), "select[0]")


async def test_a_selection_of_one_instance_says_1_instance() -> None:
    notes: list[str] = []
    hour = 3_600_000
    async with service() as (_srv, transport):
        lister = InstanceLister(transport, pacer=pacer(), clock=FakeClock())
        entry = select(("ods_users",), OUTAGE[0], OUTAGE[0] + hour)
        found = await select_entry(entry, lister, manifest_name="m.toml", on_note=notes.append)
    assert len(found) == 1
    assert notes[0].startswith("select[0]: found 1 instance with status fail or ")


# -- at scale ---------------------------------------------------------------------------------


async def test_two_rows_of_one_instance_are_selected_and_counted_once() -> None:
    # Two rows of one plan time (two instance ids: a manual run beside the scheduled one, say)
    # are two rows of the list but one instance to rerun, whichever job is read when.
    row = PAGE["instances"][0]  # type: ignore[index]
    later = {**row, "plan_time": row["plan_time"] + MINUTE}
    body = {
        "total": 3,
        "instances": [
            {**row, "instance_id": 1},
            {**row, "instance_id": 2, "submit_time": row["submit_time"] + 9},
            {**later, "instance_id": 3},
        ],
    }
    notes: list[str] = []
    lister = InstanceLister(ScriptedTransport([], body), pacer=pacer(), clock=FakeClock())
    entry = select(("j",), row["plan_time"], row["plan_time"] + HOUR, ("fail",))
    found = await select_entry(entry, lister, manifest_name="m", on_note=notes.append)
    assert found == [
        SelectedInstance("j", 7, row["plan_time"], row["submit_time"]),
        SelectedInstance("j", 7, later["plan_time"], later["submit_time"]),
    ]
    assert notes == ["select[0]: found 2 instances with status fail\n  j: 2 fail"]


async def test_a_long_listing_says_how_far_it_is_while_it_reads() -> None:
    # Three one-minute jobs over three days: 15 pages, which at a page every 4 s are a minute
    # of pages before the line of what was found. The operator hears how far the reading is
    # every 15 s (on the injected clock), not silence until the end.
    jobs = tuple(JobSpec(f"ods_clicks_{k}", 4242 + k, period_min=1) for k in range(3))
    catalog = clicks_catalog(jobs=jobs, outage=Outage(FAILED_AT, FAILED_AT + 2_520 * MINUTE))
    clock = FakeClock()
    notes: list[tuple[float, str]] = []
    async with service(FakeConfig(catalog=catalog)) as (srv, transport):
        lister = InstanceLister(transport, pacer=pacer(rate=0.25), clock=clock)
        entry = select(tuple(j.name for j in jobs), ANCHOR - 3 * DAY, ANCHOR, ("fail",))
        found = await select_entry(
            entry, lister, manifest_name="m", on_note=lambda s: notes.append((clock.now(), s))
        )
        assert srv.stats.requests == 15
    assert len(found) == 3 * 2_520
    *progress, (_, last) = notes
    assert last.startswith("select[0]: found 7,560 instances with status fail\n")
    assert len(progress) >= 2
    times = [at - 1000.0 for at, _ in progress]  # FakeClock starts at 1000
    assert times[0] >= 15.0
    assert all(b - a >= 15.0 for a, b in itertools.pairwise(times))
    for _, note in progress:
        assert note.startswith("select[0]: reading the instance lists, ")
        assert " of 3 jobs read (" in note
        assert note.endswith("Nothing is rerun before the lists are read.")


async def test_a_recorded_selection_replayed_plans_the_same_requests(tmp_path: Path) -> None:
    # The selection is held as columns per job (bulkrerun.selection): the requests planned
    # from it as the service found it, as the journal recorded it and as a list of one
    # object an instance (the shape before) are the same, in the same order, and the
    # journal's record of it is still what json.dumps writes of the rows.
    manifest = manifest_at(tmp_path, OUTAGE_SELECT + "batch = 7\n")
    async with service() as (_, transport):
        found = await query_selections(
            manifest, transport, pacer=pacer(), clock=FakeClock(), on_note=lambda _: None
        )
    assert len(found["select[0]"]) == 50  # 40 of ods_orders, 10 of ods_users
    fresh = list(plan(manifest, selections=found))
    one_by_one = list(plan(manifest, selections={k: list(v) for k, v in found.items()}))
    with open_journal(tmp_path / "j") as journal:
        journal.begin_run(RunInfo.from_manifest(manifest.path, selections=found))
    with open_journal(tmp_path / "j") as journal:
        async with service() as (srv, transport):
            replayed = await selections_for_run(
                manifest,
                journal,
                transport,
                reselect=False,
                pacer=pacer(),
                clock=FakeClock(),
                on_note=lambda _: None,
            )
            assert srv.stats.requests == 0
    again = list(plan(manifest, selections=replayed))
    assert [c.id for c in again] == [c.id for c in fresh] == [c.id for c in one_by_one]
    assert again == fresh == one_by_one
    assert len(fresh) == 6 + 2  # batches of 7: 40 = 5 * 7 + 5, 10 = 7 + 3
    assert replayed == found

    (line,) = [
        line
        for line in (tmp_path / "j").read_bytes().splitlines()
        if line.startswith(b'{"t":"select"')
    ]
    rows = [[i.job_name, i.job_id, i.plan_time, i.submit_time] for i in found["select[0]"]]
    record = {"t": "select", "run": 1, "label": "select[0]", "items": rows}
    written = json.dumps(record, separators=(",", ":")).encode()
    assert line.startswith(written[:-1] + b',"crc":"')


def test_a_replayed_selection_and_its_planning_take_little_memory(tmp_path: Path) -> None:
    # 30,000 instances of three jobs, recorded, then replayed and counted as status counts
    # what is not yet sent (a resume plans the same). Kept as one tuple an instance they
    # held 168 bytes apiece, and the replay peaked at 410 (json.loads of the record's
    # line); counting them peaked at 435 more (a copy as objects, then grouped by job).
    # As columns: 24, 137 and 233 (most of it the planner's set of the unit ids it saw).
    n = 30_000
    rows = [
        (f"ods_job_{k // 10_000:03d}", 700_000 + k // 10_000, ANCHOR - k * MINUTE, ANCHOR + k)
        for k in range(n)
    ]
    manifest = manifest_at(
        tmp_path,
        'job_names = ["ods_job_000", "ods_job_001", "ods_job_002"]\n'
        'begin = "2024-11-01T00:00:00"\nend = "2024-11-27T00:00:00"\nbatch = 1000\n',
    )
    with open_journal(tmp_path / "j") as journal:
        journal.begin_run(RunInfo.from_manifest(manifest.path, selections={"select[0]": rows}))
    del rows
    tracemalloc.start()
    try:
        _, state = read_state(tmp_path / "j")
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        not_sent, why, _ = not_sent_by_manifest(state)
        _, counting = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (not_sent, why) == (n, None)
    assert kept < 40 * n
    assert peak < 200 * n
    assert counting - kept < 300 * n


def test_found_instances_are_a_sequence_of_the_instances_added() -> None:
    a1, b1, a2 = ("a", 1, 10, 11), ("b", 2, 20, 21), ("a", 3, 30, 31)
    found = FoundInstances([a1, b1, a2])
    assert len(found) == 3
    assert found == [a1, b1, a2] == list(found)  # in the order added, each job's runs apart
    assert (found[0], found[-1], found[1:]) == (a1, a2, [b1, a2])
    assert found[2].job_name == "a"
    with pytest.raises(IndexError):
        found[3]
    # The planner's view: per job in order of first appearance, each job's in order.
    assert [(job, list(numbers)) for job, numbers in found.numbers_by_job()] == [
        ("a", [(1, 10, 11), (3, 30, 31)]),
        ("b", [(2, 20, 21)]),
    ]
    # Parts joined; a number past 64 bits (which nothing selects) is kept all the same.
    big = FoundInstances([("b", 2**64, 1, 2)])
    joined = FoundInstances.joined([found, big])
    assert joined == [a1, b1, a2, ("b", 2**64, 1, 2)]
    assert json.loads(joined.json_items()) == [list(row) for row in joined]
