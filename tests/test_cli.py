"""The command line as a user meets it: exit codes and messages for bad input (in-process,
through typer's runner, so the whole malformed-manifest corpus runs in seconds)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bulkrerun.cli import app
from tests.conftest import AK, PROJECT, SK, Cli, Service, clean_env, write_manifest

CORPUS = Path(__file__).parent / "manifests"
EXPECTED: dict[str, list[str]] = tomllib.loads((CORPUS / "expected.toml").read_text())["expect"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    import os

    for key in list(os.environ):
        if key.startswith(("BULKRERUN_", "CLOUD_SDK_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    return CliRunner()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_malformed_manifest_exits_2_naming_the_field(runner: CliRunner, name: str) -> None:
    result = runner.invoke(app, ["plan", str(CORPUS / name)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich may wrap long lines
    assert name in text
    for fragment in EXPECTED[name]:
        assert " ".join(fragment.split()) in text, fragment
    assert "Traceback" not in result.output


def test_run_with_bad_manifest_sends_nothing_and_creates_no_journal(
    runner: CliRunner, tmp_path: Path
) -> None:
    env = {
        "BULKRERUN_ENDPOINT": "http://127.0.0.1:9",  # nothing listens: a send would fail loudly
        "BULKRERUN_PROJECT_ID": "p",
        "BULKRERUN_TOKEN": "t",
    }
    result = runner.invoke(
        app,
        ["run", str(CORPUS / "concurrent_300.toml"), "--journal", str(tmp_path / "j")],
        env=env,
    )
    assert result.exit_code == 2
    assert not (tmp_path / "j").exists()


def invoke_with_log(runner: CliRunner, args: list[str], **kwargs: Any) -> Result:
    """``runner.invoke`` of a command given --log-file, its log handlers closed after: each
    invocation sets up its own, and one left open is a ResourceWarning (a test failure)."""
    import logging

    try:
        return runner.invoke(app, args, **kwargs)
    finally:
        log = logging.getLogger("bulkrerun")
        for handler in log.handlers[:]:
            handler.close()
            log.removeHandler(handler)


def test_a_new_log_file_is_private_and_one_made_before_keeps_its_mode(
    runner: CliRunner, tmp_path: Path
) -> None:
    import stat

    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    made = tmp_path / "made.log"
    made.touch()
    made.chmod(0o644)
    umask = os.umask(0o022)  # the usual one: under 077 a new file is private anyway
    try:
        for target in (tmp_path / "new.log", made):
            result = invoke_with_log(runner, ["plan", str(m), "--log-file", str(target)])
            assert result.exit_code == 0, result.output
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(made.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("env", "args", "fragment"),
    [
        ({}, [], "no endpoint"),
        ({"BULKRERUN_REGION": "mars-1"}, [], "unknown region 'mars-1'"),
        ({"BULKRERUN_ENDPOINT": "ftp://x"}, [], "is not a URL"),
        ({"BULKRERUN_ENDPOINT": "http://127.0.0.1:9"}, [], "no project ID"),
        (
            {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p"},
            [],
            "no credentials",
        ),
        (
            {
                "BULKRERUN_ENDPOINT": "http://127.0.0.1:9",
                "BULKRERUN_PROJECT_ID": "p",
                "BULKRERUN_AK": "a",
            },
            [],
            "must be set, not just one",
        ),
        (
            {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p"},
            ["--rate", "0"],
            "--rate",
        ),
        ({"BULKRERUN_RATE": "fast"}, [], "BULKRERUN_RATE"),
        (
            {"BULKRERUN_PROJECT_ID": "p", "BULKRERUN_TOKEN": "t"},
            ["--endpoint", "http://127.0.0.1:9", "--region", "cn-north-4"],
            "--endpoint and --region both say where to send",
        ),
        *(
            (
                {
                    "BULKRERUN_ENDPOINT": "http://127.0.0.1:9",
                    "BULKRERUN_PROJECT_ID": "p",
                    "BULKRERUN_TOKEN": "t",
                },
                ["--grace", grace],
                f"--grace {grace}: must be a number of seconds, 0 or more",
            )
            for grace in ("-1", "nan", "inf")
        ),
        *(
            (
                {
                    "BULKRERUN_ENDPOINT": "http://127.0.0.1:9",
                    "BULKRERUN_PROJECT_ID": "p",
                    "BULKRERUN_TOKEN": "t",
                },
                ["--outage-stop", stop],
                f"--outage-stop {stop}: must be a number of seconds above 0",
            )
            for stop in ("0", "-5", "nan", "inf")
        ),
        *(
            (
                {
                    "BULKRERUN_ENDPOINT": endpoint,
                    "BULKRERUN_PROJECT_ID": "p",
                    "BULKRERUN_TOKEN": "t",
                },
                [],
                f"endpoint '{endpoint}' is not a URL like https://host",
            )
            for endpoint in ("http://127.0.0.1:abc", "http://[bad", "http://127.0.0.1:99999")
        ),
    ],
)
def test_bad_settings_exit_2_with_a_hint(
    runner: CliRunner, tmp_path: Path, env: dict[str, str], args: list[str], fragment: str
) -> None:
    m = write_manifest(
        tmp_path / "m.toml",
        '[[window]]\njob_name = "j"\nbegin = 1732579200000\nend = 1732582800000\nchunk = "1h"\n',
    )
    result = runner.invoke(app, ["run", str(m), "--journal", str(tmp_path / "j"), *args], env=env)
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split())
    assert not (tmp_path / "j").exists()


def test_settings_from_dotenv_and_cloud_sdk_fallback(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkrerun.settings import load_settings

    (tmp_path / ".env").write_text("BULKRERUN_RATE=3.5\nBULKRERUN_REGION=cn-north-4\n")
    monkeypatch.setenv("CLOUD_SDK_AK", "sdk-ak")
    monkeypatch.setenv("CLOUD_SDK_SK", "sdk-sk")
    s = load_settings()
    assert s.rate == 3.5
    assert s.ak is not None and s.ak.get_secret_value() == "sdk-ak"
    assert "sdk-sk" not in repr(s)
    monkeypatch.setenv("BULKRERUN_AK", "own-ak")
    monkeypatch.setenv("BULKRERUN_SK", "own-sk")  # a pair of our own wins over the SDK's
    assert load_settings().ak.get_secret_value() == "own-ak"  # type: ignore[union-attr]
    assert load_settings(rate=7.0).rate == 7.0  # flags override env and .env


def test_endpoint_spellings_normalise_to_one() -> None:
    from bulkrerun.settings import Settings, normalise_endpoint, resolve_endpoint

    assert normalise_endpoint("HTTPS://Dayu.CN-North-4.myhuaweicloud.com:443/") == (
        "https://dayu.cn-north-4.myhuaweicloud.com"
    )
    assert normalise_endpoint("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    by_region = resolve_endpoint(Settings(region="cn-north-4"))
    by_url = resolve_endpoint(Settings(endpoint="https://dayu.cn-north-4.myhuaweicloud.com/"))
    assert by_region == by_url


@pytest.mark.parametrize(
    "url",
    [
        "http://user:PW77sEcReT@127.0.0.1:8080",  # sent without it, kept in the journal
        "http://user:PW77sEcReT@127.0.0.1:abc",  # its error quoted it whole
        "http://user:PW77/sEcReT@host",  # the port parser quoted a part of it
        "https://PW77sEcReT@host",
        "http://admin:12/PW77sEcReT@127.0.0.1:8080",  # read as host admin, port 12, a path
        "user:PW77sEcReT@127.0.0.1",
    ],
)
def test_an_endpoint_with_a_password_is_refused_without_showing_it(
    cli: Cli, tmp_path: Path, url: str
) -> None:
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="a"))
    out = cli("run", str(m), "--journal", str(tmp_path / "j"), "--endpoint", url)
    assert out.returncode == 2, out.stderr
    assert "***@" in out.stderr
    for part in ("PW77", "sEcReT"):
        assert part not in out.stdout + out.stderr
    assert not (tmp_path / "j").exists()


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("bulkrerun ")


def test_plan_warns_of_duplicate_units(runner: CliRunner, tmp_path: Path) -> None:
    # Each repeat is named where it is, as a manifest error names a place (it was "1 unit
    # already planned", per entry, with no item, line or file), and where it first occurs
    # (it said "planned earlier in the manifest too", and left the user to look).
    item = "{ job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 }"
    (tmp_path / "failed.csv").write_text(
        "job_id,plan_time,submit_time\n2,1732601580000,1732239754684\n\n"
        "1,1732601580000,1732239754684\n2,1732601580000,1732239754684\n",
        encoding="utf-8",
    )
    m = write_manifest(
        tmp_path / "dup.toml",
        f'[[instances]]\njob_name = "a"\nitems = [ {item}, {item} ]\n'
        f'[[instances]]\njob_name = "a"\nfile = "failed.csv"\n'
        + WINDOW.format(job="w")
        + WINDOW.format(job="w"),
    )
    result = runner.invoke(app, ["plan", str(m)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    what = (
        "job a job_id {} plan_time 1732601580000 (2024-11-26 06:13:00.000Z) submit_time "
        "1732239754684 is planned earlier too, at {}; it is sent once"
    )
    first = what.format(1, "instances[0].items[0]")
    assert f"warning: {m}: instances[0].items[1]: {first}" in said
    assert f"warning: {m}: instances[1].file: failed.csv:4: {first}" in said
    second = what.format(2, "instances[1].file: failed.csv:2")
    assert f"warning: {m}: instances[1].file: failed.csv:5: {second}" in said
    assert (
        f"warning: {m}: window[1]: the request for job w 2024-11-26 08:00:00.000+08:00 .. "
        "2024-11-26 08:59:59.999+08:00 is planned earlier too, at window[0]; it is sent once"
    ) in said
    assert "first request: instances[0] a 1 instance (id " in result.output  # not "1 instances"


def test_plan_json_warns_of_duplicate_units_on_stderr(cli: Cli, tmp_path: Path) -> None:
    # A script reading `plan --json` learned nothing of them: the plain plan warns, the
    # JSON stream said nothing anywhere. stdout stays one request per line.
    import json

    item = "{ job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 }"
    m = write_manifest(
        tmp_path / "dup.toml", f'[[instances]]\njob_name = "a"\nitems = [ {item}, {item} ]\n'
    )
    log = tmp_path / "log.jsonl"
    out = cli("plan", str(m), "--json", "--log-file", str(log), env=clean_env())
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert len(json.loads(line)["body"]["task_retrys"]) == 1
    assert (
        f"warning: {m}: instances[0].items[1]: job a job_id 1 plan_time 1732601580000 "
        "(2024-11-26 06:13:00.000Z) submit_time 1732239754684 is planned earlier too, at "
        "instances[0].items[0]; it is sent once"
    ) in " ".join(out.stderr.split())
    records = [json.loads(x) for x in log.read_text().splitlines()]
    (shown,) = (r for r in records if r["event"] == "plan shown")
    assert shown["duplicates"] == 1


WINDOW = (
    '[[window]]\njob_name = "{job}"\nbegin = 1732579200000\nend = 1732582800000\nchunk = "1h"\n'
)


def test_plan_shows_times_in_the_timezone_they_were_written_in(
    runner: CliRunner, tmp_path: Path
) -> None:
    # Written as Shanghai's 08:00 (timezone from [defaults]): shown so, not as 00:00Z.
    body = (
        '[[window]]\njob_name = "j"\nbegin = "2024-11-26T08:00:00"\nend = "2024-11-26T10:00:00"\n'
    )
    m = write_manifest(tmp_path / "m.toml", body + 'chunk = "1h"\n')
    result = runner.invoke(app, ["plan", str(m)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2024-11-26 08:00:00.000+08:00 .. 2024-11-26 10:00:00.000+08:00" in result.output
    assert (
        "first request: window[0] j 2024-11-26 08:00:00.000+08:00 .. 2024-11-26 08:59:59.999+08:00"
        in result.output
    )
    assert "last request:  window[0] j 2024-11-26 09:00:00.000+08:00 .. " in result.output
    # No timezone anywhere (epoch milliseconds): UTC, marked Z.
    m.write_text(m.read_text().replace('timezone = "Asia/Shanghai"\n', ""))
    m.write_text(
        m.read_text()
        .replace('"2024-11-26T08:00:00"', "1732579200000")
        .replace('"2024-11-26T10:00:00"', "1732586400000")
    )
    result = runner.invoke(app, ["plan", str(m)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "first request: window[0] j 2024-11-26 00:00:00.000Z .. " in result.output


def test_plan_names_the_jobs_a_window_reruns_with_its_own(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A window's request reruns its job's instances and those of its `jobs`: a review of the
    # plan that showed only ods_orders hid that dwd_orders is rerun too.
    ws = "62fbba734e634c5087656fc3ff7adf34"
    jobs = f'jobs = [ {{ job_name = "dwd_orders", workspace_id = "{ws}" }} ]\n'
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="ods_orders") + jobs)
    result = runner.invoke(app, ["plan", str(m)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "│ ods_orders + dwd_orders │" in result.output
    assert "first request: window[0] ods_orders + dwd_orders 2024-11-26 " in result.output
    assert "last request:  window[0] ods_orders + dwd_orders 2024-11-26 " in result.output


def test_plan_warns_of_a_window_or_selection_that_begins_in_the_future(
    runner: CliRunner, tmp_path: Path
) -> None:
    # 2099 for 2024 under stress: no instance is planned there yet, so the request would be
    # accepted (done) and rerun nothing. Said before anything is sent; a past window is not.
    body = (
        '[[window]]\njob_name = "j"\nbegin = "2099-11-26T08:00:00"\n'
        'end = "2099-11-26T10:00:00"\nchunk = "1h"\n'
        '[[window]]\njob_name = "k"\nbegin = "2024-11-26T08:00:00"\n'
        'end = "2024-11-26T10:00:00"\nchunk = "1h"\n'
    )
    m = write_manifest(tmp_path / "m.toml", body)
    result = runner.invoke(app, ["plan", str(m)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        f"warning: {m}: window[0].begin = 2099-11-26 08:00:00.000+08:00 is in the future: "
        "no instance is planned there yet, so its requests rerun nothing; check the year "
        "and the timezone"
    ) in said
    assert "window[1]" not in said.split("plan of")[0]


def test_plan_shows_names_with_brackets_as_written(runner: CliRunner, tmp_path: Path) -> None:
    # rich would take "[bold]" for a style tag and drop it: names are printed, never parsed.
    m = write_manifest(tmp_path / "m[prod].toml", WINDOW.format(job="ods[bold]orders"))
    result = runner.invoke(app, ["plan", str(m)], env={"BULKRERUN_PROJECT_ID": "p[x]"})
    assert result.exit_code == 0, result.output
    assert "plan of " + str(m) in result.output
    assert "first request: window[0] ods[bold]orders " in result.output
    assert "project p[x];" in result.output


def test_a_long_problem_is_one_line_when_piped(runner: CliRunner, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"), defaults="retry_locaton = 1\n")
    result = runner.invoke(app, ["plan", str(m)])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if "retry_locaton" in x]
    assert len(line) > 160  # longer than the console, not broken across lines
    assert line.rstrip().endswith("node_name, timezone")


def test_plan_with_an_unknown_region_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    result = runner.invoke(app, ["plan", str(m)], env={"BULKRERUN_REGION": "mars-1"})
    assert result.exit_code == 2, result.output
    assert "unknown region 'mars-1'" in result.output


def test_a_log_file_that_cannot_be_written_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    for target in (tmp_path / "no" / "such" / "x.log", tmp_path):
        result = runner.invoke(app, ["plan", str(m), "--log-file", str(target)])
        assert result.exit_code == 2, result.output
        assert f"--log-file {target}: cannot write to it" in result.output
        assert "Traceback" not in result.output


def test_a_log_file_that_fills_up_is_named_as_given_and_by_what_the_command_keeps(
    cli: Cli, fake_service: Callable[..., Service], tmp_path: Path
) -> None:
    """A log file on a full disk: every command said "The journal records the run as
    before", plan and status too, which record nothing, and named the file by its absolute
    path where the user gave a relative one."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    (tmp_path / "full.log").symlink_to("/dev/full")  # opens, and every write: ENOSPC
    srv = fake_service()
    write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    warning = (
        "warning: cannot write the log file full.log (No space left on device): nothing more "
        "is logged to it."
    )
    commands = {
        "plan": (["plan", "m.toml"], ""),
        "run": (["run", "m.toml", "--journal", "j"], " The journal records the run as before."),
        "status": (["status", "j"], ""),
        "report": (["report", "j"], ""),
        "verify": (["verify", "j"], " The journal records the verification as before."),
    }
    for args, kept in commands.values():
        out = cli(*args, "--log-file", "full.log", url=srv.url)
        assert out.returncode == 0, out.stderr
        said = [line for line in out.stderr.splitlines() if "log file" in line]
        assert said == [warning + kept], args


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rate-limit", "0"], "--rate-limit 0.0: must be more than 0"),
        (["--p429", "2"], "--p429 2.0: must be a probability"),
        (["--ak", "x"], "give both the AK and the SK"),
        (["--token", ""], "the token is empty"),
        (["--latency-ms", "-5"], "--latency-ms -5.0: must be 0 or more"),
        (["--drop-after-accept", "1.5"], "--drop-after-accept 1.5: must be a probability"),
        (["--rate-burst", "0"], "--rate-burst 0: must be 1 or more"),
    ],
)
def test_fake_server_refuses_bad_options_with_exit_2(
    runner: CliRunner, args: list[str], fragment: str
) -> None:
    result = runner.invoke(app, ["fake-server", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_fake_server_on_a_taken_port_exits_2(runner: CliRunner) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["fake-server", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "the fake service could not start" in result.output
    assert "address already in use" in result.output.lower()


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # While the progress bar is drawn, rich puts a proxy in sys.stderr that prints above the
    # bar; a handler that kept the stderr of its start wrote into the bar's line.
    import io
    import logging
    import sys

    import structlog

    from bulkrerun.cli import configure_logging

    logger = logging.getLogger("bulkrerun")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        configure_logging(True, None)
        swapped = io.StringIO()
        monkeypatch.setattr(sys, "stderr", swapped)
        logging.getLogger("bulkrerun.cli").warning("drawn above the bar")
        assert "drawn above the bar" in swapped.getvalue()
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
        structlog.reset_defaults()


def test_verify_of_a_mistyped_journal_exits_2_and_creates_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    env = {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p"}
    result = runner.invoke(app, ["verify", str(tmp_path / "nope.journal")], env=env)
    assert result.exit_code == 2, result.output
    assert f"no journal at {tmp_path / 'nope.journal'}" in result.output
    assert not (tmp_path / "nope.journal").exists()


def test_a_folder_given_as_the_journal_names_each_commands_own_argument(
    runner: CliRunner, tmp_path: Path
) -> None:
    """verify's argument is the journal itself, as status's: its message named --journal,
    which only run has."""
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    folder = tmp_path / "journals"
    folder.mkdir()
    env = {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p"}
    env["BULKRERUN_TOKEN"] = "token-token"
    said = {}
    for args in (["verify", str(folder)], ["status", str(folder)], ["report", str(folder)]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, result.output
        said[args[0]] = result.output.splitlines()[0]  # then a log line, after a -v test
    assert set(said.values()) == {f"error: {folder} is a directory, not a bulkrerun journal"}
    result = runner.invoke(app, ["run", str(m), "--journal", str(folder)], env=env)
    assert result.exit_code == 2, result.output
    assert f"error: {folder} is a directory; --journal needs a file path" in result.output
    assert list(folder.iterdir()) == []


def test_verify_without_a_project_says_so_and_leaves_the_journal_alone(
    runner: CliRunner, tmp_path: Path
) -> None:
    from bulkrerun.journal import Binding, Journal

    path = tmp_path / "j"
    Journal.open(path, Binding("p1", "http://127.0.0.1:9"), tool_version="t").close()
    before = path.read_bytes()
    result = runner.invoke(
        app, ["verify", str(path)], env={"BULKRERUN_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert result.exit_code == 2, result.output
    assert "no project ID: set BULKRERUN_PROJECT_ID or --project-id" in result.output
    assert path.read_bytes() == before


def test_an_interrupt_after_a_run_sent_prints_its_resume_command_not_the_raw_one(
    tmp_path: Path,
) -> None:
    # A Ctrl-C after the engine, outside the watch's own handling (a second one while the
    # run ends), reaches main(); typer has turned it into a silent exit 130. The raw command
    # line would repeat --resend-held on what this run left held: main() prints the run's
    # own resume command instead. Here the interrupt lands in code run from a string (as in
    # a dataclass made during an import): under `python -m` the process then used to kill
    # itself with SIGINT (-2) instead of exiting 130.
    (tmp_path / "interrupted.py").write_text(
        textwrap.dedent(
            """
            import bulkrerun.cli as cli

            def interrupted_app(args):
                cli._interrupt.fired = True
                cli._interrupt.resume = "bulkrerun run m.toml --journal j"
                try:
                    exec("raise KeyboardInterrupt")
                except KeyboardInterrupt:
                    raise SystemExit(130) from None  # as typer does

            cli.app = interrupted_app
            cli.main(["run", "m.toml", "--journal", "j", "--resend-held", "--watch"])
            """
        ),
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "interrupted"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert out.returncode == 130, out.stderr
    assert "  bulkrerun run m.toml --journal j\n" in out.stderr
    assert "--resend-held" not in out.stderr


def test_the_demo_runs_from_any_folder(cli: Cli) -> None:
    # The README's first command, as an installed `bulkrerun demo` would run it elsewhere:
    # configs/demo.toml is found from the package, not from the current folder.
    out = cli("demo", timeout=180)
    assert out.returncode == 0, out.stderr
    assert "ledger: the fake service accepted 222 reruns" in out.stderr
    assert "222 of 224 requests accepted" in " ".join(out.stderr.split())
    assert not (cli.cwd / "configs").exists()
    missing = cli("demo", "--manifest", "nope.toml")
    assert missing.returncode == 2
    assert "nope.toml not found (--manifest)" in missing.stderr


@pytest.mark.anyio
async def test_the_signal_receivers_hand_sigterm_back_the_moment_they_close() -> None:
    # Removing anyio's receiver resets SIGTERM to the default, which kills. The run's
    # display and task group still closed after the engine's receiver did: a SIGTERM then
    # ended the process with 143, and no resume command.
    import signal

    import bulkrerun.cli as cli_module

    every = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = [signal.getsignal(s) for s in every]
    try:
        cli_module._signals_interrupt()
        stops = cli_module._interrupt.signals  # SIGHUP too, unless pytest runs under nohup
        assert stops[:2] == (signal.SIGINT, signal.SIGTERM)
        with cli_module._signal_receiver():
            for s in stops:
                assert signal.getsignal(s) is not cli_module._interrupt  # anyio's
        for s in stops:
            assert signal.getsignal(s) is cli_module._interrupt
    finally:
        for s, handler in zip(every, saved, strict=True):
            signal.signal(s, handler)


def test_a_notice_goes_to_stderr_and_to_the_log_only_when_there_is_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json
    import logging

    from bulkrerun import cli

    root = logging.getLogger("bulkrerun")
    monkeypatch.setattr(root, "handlers", [])  # no log: no -v, no --log-file
    cli._notice("verify: the instance list has been failing")
    out = capsys.readouterr()
    assert out.out == ""  # stdout is the command's output (verify's summary): no log lines
    assert out.err == "verify: the instance list has been failing\n"
    cli.configure_logging(False, tmp_path / "log")
    try:
        cli._notice("verify: the instance list answers again")
    finally:
        for handler in root.handlers:
            handler.close()
    (record,) = map(json.loads, (tmp_path / "log").read_text().splitlines())
    assert (record["event"], record["message"]) == (
        "notice",
        "verify: the instance list answers again",
    )
    assert capsys.readouterr().out == ""


@pytest.mark.timeout(60)
def test_a_journal_path_that_is_not_a_file_is_refused_at_once(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A FIFO would make status wait for a writer; /dev/null would take every record and
    # keep none; /dev/zero would be read until the memory runs out.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    m = write_manifest(
        tmp_path / "m.toml",
        '[[window]]\njob_name = "j"\nbegin = 1732579200000\nend = 1732582800000\nchunk = "1h"\n',
    )
    env = {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p"}
    env["BULKRERUN_TOKEN"] = "token-token"
    for path in (str(fifo), "/dev/null", "/dev/zero"):
        for args in (["run", str(m), "--journal", path], ["status", path], ["report", path]):
            result = runner.invoke(app, args, env=env)
            assert result.exit_code == 2, (args, result.output)
            said = " ".join(result.output.split())
            assert f"{path} is not a regular file (a device, a FIFO, a socket)" in said
        result = runner.invoke(app, ["verify", path], env=env)
        assert result.exit_code == 2 and "is not a regular file" in result.output
    for args in (["status", str(tmp_path)], ["report", str(tmp_path)]):  # a folder
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, result.output
        assert f"{tmp_path} is a directory, not a bulkrerun journal" in result.output


def test_every_command_leaves_its_record_in_the_log_file(runner: CliRunner, tmp_path: Path) -> None:
    """The trail an incident's review follows: plan, status, report and verify each leave one
    record of what they read or decided, not only run."""
    import json

    from bulkrerun.journal import Binding, Journal

    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="j"))
    path = tmp_path / "j"
    Journal.open(path, Binding("p1", "http://127.0.0.1:9"), tool_version="t").close()
    env = {"BULKRERUN_ENDPOINT": "http://127.0.0.1:9", "BULKRERUN_PROJECT_ID": "p1"}
    env["BULKRERUN_TOKEN"] = "token-token"
    log = tmp_path / "log.jsonl"
    commands = (
        ["plan", str(m)],
        ["plan", str(m), "--json"],
        ["status", str(path)],
        ["report", str(path), "-f", "csv"],
        ["verify", str(path)],
        ["verify", str(path)],
    )
    for args in commands:
        result = invoke_with_log(runner, [*args, "--log-file", str(log)], env=env)
        assert result.exit_code == 0, result.output
    # A command that ends early is in the trail too.
    result = invoke_with_log(runner, ["status", str(tmp_path / "nope"), "--log-file", str(log)])
    assert result.exit_code == 2, result.output
    bogus = ["report", str(path), "--format", "bogus", "--log-file", str(log)]
    assert invoke_with_log(runner, bogus).exit_code == 2
    records = [json.loads(line) for line in log.read_text().splitlines()]
    bad_format = records.pop()
    assert bad_format["why"] == "error: --format bogus: must be table, csv, json or manifest"
    ended = records.pop()
    assert (ended["event"], ended["exit_code"]) == ("command ended", 2)
    assert ended["why"] == f"error: no journal at {tmp_path / 'nope'}"
    events = [r["event"] for r in records]
    assert events == [
        "plan shown",
        "plan shown",
        "status read",
        "report written",
        "verify ended",
        "verify ended",
    ]
    plan, lines, status, report, verify, again = records
    assert plan["requests"] == lines["requests"] == 1 and lines["json"] is True
    assert plan["manifest_sha256"] and plan["manifest"] == str(m)
    assert (status["done"], status["pending"], status["journal"]) == (0, None, str(path))
    assert (report["format"], report["rows"]) == ("csv", 0)
    assert (verify["exit_code"], verify["still_held"]) == (0, 0)
    # Each verify's number, as the journal's records of it say it (it had none).
    ends = [json.loads(x) for x in path.read_text().splitlines() if '"verify_end"' in x]
    assert [verify["n"], again["n"]] == [end["n"] for end in ends] == [1, 2]
    assert all(r["timestamp"].endswith("Z") for r in records)


def test_every_verify_ends_its_log_with_its_record_stopped_or_in_a_run(
    cli: Cli, fake_service: Callable[..., Service], tmp_path: Path
) -> None:
    """A verify stopped by a fatal condition logged only 'command ended', without its number,
    and the verification of run --verify-held logged no record of its end at all."""
    srv = fake_service("--drop-after-accept", "1")  # accepted, and no answer: held
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="ods_orders"))
    assert cli("run", str(m), "--journal", "j", url=srv.url).returncode == 1
    refused = cli.env(srv.url, BULKRERUN_SK="not-the-secret-key-0123456789ab")
    out = cli("verify", "j", "--log-file", "verify.log", env=refused)
    assert out.returncode == 3, out.stderr
    out = cli(
        "run", str(m), "--journal", "j", "--verify-held", "--log-file", "run.log", url=srv.url
    )
    assert out.returncode in (0, 1), out.stderr
    journal = [json.loads(line) for line in (tmp_path / "j").read_text().splitlines()]
    ends = [r for r in journal if r["t"] == "verify_end"]
    assert [(e["n"], e["exit"], e["stopped"]) for e in ends[:1]] == [(1, 3, "auth_refused")]
    stopped = [json.loads(line) for line in (tmp_path / "verify.log").read_text().splitlines()]
    assert [r["event"] for r in stopped] == ["verify ended", "command ended"]
    assert {k: stopped[0][k] for k in ("journal", "n", "exit_code", "stopped", "still_held")} == {
        "journal": "j", "n": 1, "exit_code": 3, "stopped": "auth_refused", "still_held": None
    }  # fmt: skip
    assert stopped[0]["message"] == ends[0]["message"]
    in_run = [json.loads(line) for line in (tmp_path / "run.log").read_text().splitlines()]
    assert [r["event"] for r in in_run] == ["verify ended", "run started", "run ended"]
    # What it decided (however verify decides it), as the journal's record of it says it.
    decided = ("verified_done", "made_pending", "still_held")
    assert (in_run[0]["n"], in_run[0]["exit_code"], in_run[0]["stopped"]) == (
        2,
        ends[1]["exit"],
        None,
    )
    assert [in_run[0][k] for k in decided] == [ends[1][k] for k in decided]
    assert sum(ends[1][k] for k in decided) == 1


def test_only_what_a_signal_caused_ends_as_interrupted() -> None:
    from bulkrerun.cli import _from_interrupt

    made = RuntimeError("Error calling __set_name__")
    made.__cause__ = KeyboardInterrupt()
    exit_130 = SystemExit(130)
    exit_130.__context__ = KeyboardInterrupt()
    assert _from_interrupt(made) and _from_interrupt(exit_130)
    assert not _from_interrupt(ValueError("a defect of the command's own"))
    assert not _from_interrupt(SystemExit(2))  # bad input, said by the command itself


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_fake_server_refuses_a_port_out_of_range(cli: Cli, port: str) -> None:
    # 70000 listened on 4464 (the port modulo 65536), 65536 on any free port.
    out = cli("fake-server", "--port", port, timeout=30)
    assert out.returncode == 2
    assert "--port" in out.stderr


def test_the_log_masks_a_part_of_a_secret_a_request_carries() -> None:
    from bulkrerun.cli import _Redact

    token = "MIIEXAYJKoZIhvcNAQcCoIIETTCCBEkCAQExDTALBglghkgBZQMEAgEw"
    redact = _Redact(["SK-secret", token], sent=[token])
    event = redact(None, "info", {"error_msg": f"read: b'{token[:20]}...'", "sk": "x", "n": 1})
    assert event == {"error_msg": "read: b'***...'", "sk": "[redacted]", "n": 1}
    assert redact(None, "info", {"m": f"the {token} whole"}) == {"m": "the [redacted] whole"}


def test_a_manifest_with_one_problem_says_one_problem(runner: CliRunner) -> None:
    result = runner.invoke(app, ["plan", str(CORPUS / "concurrent_300.toml")])
    assert result.exit_code == 2, result.output
    assert "manifest has 1 problem; nothing was sent" in " ".join(result.output.split())
    assert "(s)" not in result.output


def test_plan_of_one_instance_in_one_request_counts_them_in_the_singular(
    runner: CliRunner, tmp_path: Path
) -> None:
    item = "{ job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 }"
    body = f'[[instances]]\njob_name = "a"\nitems = [ {item} ]\n'
    m = write_manifest(tmp_path / "one.toml", body)
    result = runner.invoke(app, ["plan", str(m)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "first request: instances[0] a 1 instance (id" in text
    assert "1 request to" in text
    assert "1 instances" not in text
    assert "1 requests" not in text
    assert "at 10 requests/s that takes under a second." in text  # not "about 0s"


def test_what_a_run_sends_counts_one_unit_in_the_singular(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from bulkrerun.cli import RunArgs, _print_resume

    def args(**flags: bool) -> RunArgs:
        return RunArgs(
            manifest=tmp_path / "m.toml",
            journal=tmp_path / "j",
            resend_held=flags.get("resend_held", False),
            retry_failed=False,
            verify_held=False,
            reselect=False,
            watch=False,
            max_failure_ratio=None,
            canary=0,
            grace=5.0,
            outage_stop=600.0,
            progress=False,
            log_chunks=False,
            resume="",
        )

    one = SimpleNamespace(done=0, failed=0, held=0, new=1, to_send=1)
    _print_resume(args(), one, resumed=False, where="there")
    held = SimpleNamespace(done=1, failed=1, held=1, new=0, to_send=0)
    _print_resume(args(), held, resumed=True, where="there")
    _print_resume(args(resend_held=True), held, resumed=True, where="there")
    text = " ".join(capsys.readouterr().err.split())
    assert "sending 1 unit to there" in text
    assert "1 unit done, 1 failed, 1 held, 0 new" in text
    assert "1 held unit is not sent: the service may have acted on it." in text
    assert "send it again (it may then run twice)" in text
    assert "1 failed unit is not sent;" in text
    assert "--resend-held sends 1 unit again whose first request may have been acted on" in text
    assert "1 units" not in text


def test_plan_json_paths_carry_the_endpoints_path_prefix_as_sent(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A run sends to the endpoint's URL plus the API path: behind a gateway or proxy that
    # routes by prefix, /gw/v2/...; plan --json shows the path exactly as it will be sent.
    item = "{ job_id = 1, plan_time = 1732601580000, submit_time = 1732239754684 }"
    body = f'[[instances]]\njob_name = "a"\nitems = [ {item} ]\n' + WINDOW.format(job="w")
    m = write_manifest(tmp_path / "m.toml", body)
    args = ["plan", str(m), "--json", "--project-id", "p1"]
    plain = runner.invoke(app, args)
    behind = runner.invoke(app, [*args, "--endpoint", "http://127.0.0.1:9/gw/"])
    assert plain.exit_code == behind.exit_code == 0, plain.output + behind.output
    import json

    plain_lines = [json.loads(line) for line in plain.stdout.splitlines()]
    behind_lines = [json.loads(line) for line in behind.stdout.splitlines()]
    assert [x["path"] for x in plain_lines] == [
        "/v2/p1/factory/jobs/a/instances/retry",
        "/v2/p1/factory/jobs/w/instances/retry",
    ]
    assert [x["path"] for x in behind_lines] == ["/gw" + x["path"] for x in plain_lines]
    assert [x["id"] for x in behind_lines] == [x["id"] for x in plain_lines]


def test_the_steps_status_gives_after_a_demo_work_pasted(
    cli: Cli, fake_service: Callable[..., Service]
) -> None:
    # The demo's fake service, its port and its keys end with it: status's steps named no
    # endpoint, and a pasted `--retry-failed` (or `verify`) ended "no endpoint" (exit 2).
    import json
    import shlex
    from urllib.parse import urlsplit

    assert cli("demo", "--journal", "d.journal", timeout=180).returncode == 0
    status = cli("status", "d.journal", "--json", env=clean_env())
    steps = json.loads(status.stdout)["next_steps"]
    endpoint = json.loads(status.stdout)["endpoint"]
    port = urlsplit(endpoint).port
    assert steps[0].startswith("this journal is the demo's, and its fake service stopped")
    assert f"`bulkrerun fake-server --catalog --port {port}`" in steps[0]
    assert "`export BULKRERUN_TOKEN=demo-token`" in steps[0]
    (again,) = [s for s in steps if s.endswith("--retry-failed")]
    command = shlex.split(again.rsplit(": ", 1)[1])
    assert command[0] == "bulkrerun"
    # As the first step says: a fake service at the journal's endpoint, any credentials.
    service = fake_service("--catalog", "--port", str(port), auth=False)
    assert service.url == endpoint
    pasted = cli(*command[1:], env=clean_env(BULKRERUN_TOKEN="demo-token"))
    # It reached the service, which refuses the demo's unknown job again (exit 1, not 2).
    assert pasted.returncode == 1, pasted.stderr
    text = " ".join(pasted.stderr.split())
    assert f"sending 4 to project {PROJECT} at {endpoint}" in text
    assert "failed DLF.1000: 4" in text
    assert "warning" not in text


def test_status_read_slim_says_what_a_full_read_says(
    runner: CliRunner,
    cli: Cli,
    fake_service: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """status reads a journal slim (the windows sent once and done as offsets only); what
    it prints, as text and as JSON, is what a full read prints: on a journal with done,
    failed, held and never sent units, and a request done after a send of unknown outcome."""
    import bulkrerun.report as report_module
    from bulkrerun.journal import read_state

    srv = fake_service("--missing-job", "ghost_job", "--drop-after-accept", "0.2", "--seed", "5")
    begin = 1_732_579_200_000
    good = (
        f'[[window]]\njob_name = "ods_orders"\nbegin = {begin}\nend = {begin + 3_600_000}\n'
        'chunk = "2m"\n'
    )
    (tmp_path / "failed.csv").write_text(
        "job_id,plan_time,submit_time\n"
        + "".join(f"{100 + i},{begin + i * 60_000},{begin - 3_600_000}\n" for i in range(12)),
        encoding="utf-8",
    )
    rows = '[[instances]]\njob_name = "ods_payments"\nbatch = 5\nfile = "failed.csv"\n'
    j = tmp_path / "j"
    first = write_manifest(tmp_path / "first.toml", good + rows)
    out = cli("run", str(first), "--journal", str(j), "--max-attempts", "1", url=srv.url)
    assert out.returncode == 1, out.stderr  # some held (dropped after acceptance)
    # A second manifest whose refused window stops the run on its canary: failed units,
    # and the rest of that window never sent.
    ghost = good.replace("ods_orders", "ghost_job")
    second = write_manifest(tmp_path / "second.toml", ghost + good)
    args = ["--canary", "3", "--max-inflight", "1", "--max-attempts", "1"]
    out = cli("run", str(second), "--journal", str(j), *args, url=srv.url)
    assert out.returncode == 3, out.stderr

    slim = [runner.invoke(app, ["status", str(j), *a]) for a in ([], ["--json"])]
    full_read = functools.partial(read_state, slim=False)  # whatever status asks for
    monkeypatch.setattr(report_module, "read_state", lambda path, **_: full_read(path))
    full = [runner.invoke(app, ["status", str(j), *a]) for a in ([], ["--json"])]
    assert [r.output for r in slim] == [r.output for r in full]
    assert [r.exit_code for r in slim] == [r.exit_code for r in full]
    s = json.loads(slim[1].output)
    assert s["done"] and s["failed"] and s["held"] and s["pending"], s
    _, state = read_state(j, slim=True)
    assert len(state.settled) > 20  # the good window's requests, most of them


def test_status_checks_an_instance_file_line_by_line_only_when_its_digest_changed(
    runner: CliRunner,
    cli: Cli,
    fake_service: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """To count what is not yet sent, status plans the journal's copy of the manifest again
    with the instance files the run read. A file whose digest is still the one the run
    recorded was found good line by line by that run: it is only hashed, then planned. One
    that changed is checked line by line again, and the count is refused."""
    import bulkrerun.manifest as manifest_module

    srv = fake_service()
    rows = tmp_path / "failed.csv"
    begin = 1_732_579_200_000
    lines = [f"{100 + i},{begin + i * 60_000},{begin - 3_600_000}\n" for i in range(12)]
    rows.write_text("job_id,plan_time,submit_time\n" + "".join(lines), encoding="utf-8")
    m = write_manifest(
        tmp_path / "m.toml",
        '[[instances]]\njob_name = "ods_payments"\nbatch = 5\nfile = "failed.csv"\n',
    )
    j = tmp_path / "j"
    out = cli("run", str(m), "--journal", str(j), url=srv.url)
    assert out.returncode == 0, out.stderr

    reads: list[str] = []  # each read of the file's lines: "checked" or "planned"
    rows_of = manifest_module._rows

    def counted_rows(path: Path, digest: Any = None) -> Any:
        reads.append("checked" if digest is not None else "planned")
        return rows_of(path, digest)

    monkeypatch.setattr(manifest_module, "_rows", counted_rows)
    said = runner.invoke(app, ["status", str(j), "--json"])
    s = json.loads(said.output)
    assert (s["done"], s["pending"]) == (12, 0)
    assert reads == ["planned"]

    reads.clear()
    rows.write_text(rows.read_text(encoding="utf-8") + "999,1732579200000,1732575600000\n")
    said = runner.invoke(app, ["status", str(j), "--json"])
    s = json.loads(said.output)
    assert s["pending"] is None
    assert (
        f"the instance file {rows} (instances[0]) changed since run 1 read it"
        in (s["pending_unknown"])
    )
    assert reads == ["checked"]


def test_a_run_counts_its_journals_units_once_at_its_end(
    runner: CliRunner,
    fake_service: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At its end a run counts the units per state (for its exit code) and sums itself up
    with those counts: one pass over every unit of the journal, not two (0.1 s per million)."""
    from bulkrerun.journal import JournalState

    srv = fake_service("--drop-after-accept", "0.3", "--seed", "2")
    begin = 1_732_579_200_000
    m = write_manifest(
        tmp_path / "m.toml",
        f'[[window]]\njob_name = "ods_orders"\nbegin = {begin}\nend = {begin + 3_600_000}\n'
        'chunk = "5m"\n',
    )
    passes: list[int] = []
    count = JournalState.counts

    def counted(state: JournalState) -> Any:
        passes.append(len(state.units))
        return count(state)

    monkeypatch.setattr(JournalState, "counts", counted)
    env = {"BULKRERUN_AK": AK, "BULKRERUN_SK": SK, "BULKRERUN_PROJECT_ID": "p"}
    env["BULKRERUN_ENDPOINT"] = srv.url
    j = str(tmp_path / "j")
    result = runner.invoke(app, ["run", str(m), "--journal", j, "--no-progress"], env=env)
    assert result.exit_code == 1, result.output  # some held: the counts decide the exit code
    assert "held" in result.output
    assert len(passes) == 1


def test_a_resume_from_a_fresh_shell_is_told_what_its_journal_is_bound_to(
    cli: Cli, fake_service: Callable[..., Service], tmp_path: Path
) -> None:
    # The first run had its endpoint and project from the environment; the next operator's
    # shell has neither. Pasted as run printed it, the resume ended "no endpoint" alone.
    srv = fake_service()
    m = write_manifest(tmp_path / "m.toml", WINDOW.format(job="ods_orders"))
    assert cli("run", "m.toml", "--journal", "j", url=srv.url).returncode == 0
    keys_only = clean_env(BULKRERUN_AK=AK, BULKRERUN_SK=SK)
    for command in (["run", "m.toml", "--journal", "j"], ["verify", "j"]):
        out = cli(*command, env=keys_only)
        assert out.returncode == 2, out.stderr
        flat = " ".join(out.stderr.split())
        add = f"add --endpoint {srv.url} --project-id {PROJECT}"
        assert f"The journal j is bound to project {PROJECT} at {srv.url}: to go on" in flat
        assert flat.endswith(add), flat
        again = cli(*command, *add.split()[1:], env=keys_only)
        assert again.returncode == 0, again.stderr  # as added, it goes on
    # Only what is missing is named; a new journal has nothing to say.
    half = cli("run", "m.toml", "--journal", "j", "--endpoint", srv.url, env=keys_only)
    assert " ".join(half.stderr.split()).endswith(f"add --project-id {PROJECT}"), half.stderr
    new = cli("run", "m.toml", "--journal", "new", env=keys_only)
    assert new.returncode == 2 and "bound to" not in new.stderr, new.stderr
    assert m.exists()


WINDOW_60 = """
[[window]]
job_name = "ods_orders"
begin = 1732579200000
end = 1732582800000
chunk = "1m"
"""  # 60 requests


@pytest.mark.parametrize(
    ("grace", "signals", "happened"),
    [
        ("5", 1, "SIGINT: it stopped sending; the requests in flight were finished"),
        (
            "0",
            1,
            "SIGINT: it stopped sending; the requests still in flight after --grace 0 s were "
            "cut off, their outcome unknown (held)",
        ),
        (
            "5",
            2,
            "SIGINT, then SIGINT again: it stopped sending; the requests still in flight were "
            "cut off, their outcome unknown (held)",
        ),
    ],
)
def test_an_interrupted_run_records_what_happened_not_what_was_said_live(
    cli: Cli, fake_service: Callable[..., Service], tmp_path: Path, grace: str, signals: int,
    happened: str,
) -> None:  # fmt: skip
    # The journal's end record, the log's `run ended` and status kept the words said live
    # at the first Ctrl-C, "SIGINT: finishing requests in flight (again to stop at once)":
    # advice to the person at the keyboard then, and untrue once a second Ctrl-C or the
    # grace cut the requests off. They say what happened now.
    import signal
    import time

    srv = fake_service("--latency-ms", "2000")  # each request in flight for 2 s
    m = write_manifest(tmp_path / "m.toml", WINDOW_60)
    j, log = tmp_path / "j", tmp_path / "run.jsonl"
    proc = cli.popen(
        "run", str(m), "--journal", str(j), "--rate", "100", "--max-inflight", "4",
        "--grace", grace, "--log-file", str(log), url=srv.url,
    )  # fmt: skip
    srv.wait_accepted(1)  # accepted, its answer 2 s away: in flight
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # two signals, not one the kernel merged
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopping: SIGINT: finishing requests in flight (again to stop at once)" in stderr
    (ended,) = [r for r in map(json.loads, j.read_text().splitlines()) if r["t"] == "end"]
    logged = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "run ended"]
    assert ended["message"] == logged[0]["message"] == happened
    shown = " ".join(cli("status", str(j)).stdout.split())
    assert f"was interrupted {ended_at(cli, j)} ({happened})" in shown
    assert "again to stop at once" not in shown
    held = json.loads(cli("status", str(j), "--json").stdout)["held"]
    assert (held == 0) == happened.endswith("finished")


def ended_at(cli: Cli, journal: Path) -> str:
    out = cli("status", str(journal), "--json")
    ended: str = json.loads(out.stdout)["last_run"]["ended"]
    return ended
