"""The Program model refuses what supervisord would reject, and agrees with supervisord itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from kestrelq.supervisord.model import InvalidProgram, Program, validate_all
from kestrelq.supervisord.render import program_items, render_program, section

WORKERS = Program(
    name="work_worker",
    command="python3 consume.py",
    process_name="%(program_name)s_%(process_num)02d",
    numprocs=4,
    stopasgroup=True,
    killasgroup=True,
    redirect_stderr=True,
    stdout_logfile="/var/log/kestrelq/%(program_name)s_%(process_num)02d.log",
)
LISTENER = Program(
    name="fatal",
    command="python3 -m kestrelq.supervisord.listener",
    kind="eventlistener",
    events=("PROCESS_STATE_FATAL",),
    stdout_logfile="NONE",
    stdout_logfile_maxbytes="0",
)


def test_valid_programs_pass() -> None:
    validate_all([WORKERS, LISTENER])


REFUSALS = [
    pytest.param(
        dataclasses.replace(WORKERS, process_name="%(program_name)s"),
        "numprocs > 1 needs %(process_num) in process_name",
        id="numprocs-without-process_num",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, killasgroup=False),
        "stopasgroup=true needs killasgroup=true",
        id="stopasgroup-without-killasgroup",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, stdout_logfile="/dev/stdout"),
        "set stdout_logfile_maxbytes=0",
        id="dev-stdout-rotated",
    ),
    pytest.param(
        dataclasses.replace(LISTENER, stderr_logfile="/dev/stderr"),
        "set stderr_logfile_maxbytes=0",
        id="dev-stderr-rotated",
    ),
    pytest.param(
        dataclasses.replace(LISTENER, redirect_stderr=True),
        "an eventlistener may not set redirect_stderr=true",
        id="listener-redirect_stderr",
    ),
    pytest.param(
        dataclasses.replace(LISTENER, events=()),
        "needs at least one event",
        id="listener-without-events",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, events=("PROCESS_STATE_FATAL",)),
        "events= belongs in an [eventlistener:x] section",
        id="program-with-events",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, stdout_logfile="/var/log/kestrelq/workers.log"),
        "4 processes would share the rotated file",
        id="shared-rotated-log",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, stderr_logfile="/var/log/err_%(process_num)02d.log"),
        "redirect_stderr=true and a stderr_logfile contradict",
        id="redirect-and-stderr-log",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, name="work worker"), "may hold only", id="name-with-space"
    ),
    pytest.param(
        dataclasses.replace(WORKERS, stopsignal="SIGTERM"), "stopsignal", id="bad-stopsignal"
    ),
    pytest.param(
        dataclasses.replace(WORKERS, environment=(("1BAD", "x"),)),
        "not a valid variable name",
        id="bad-env-key",
    ),
    pytest.param(
        dataclasses.replace(WORKERS, environment=(("OK", 'a"b'),)),
        "may not contain",
        id="quote-in-env-value",
    ),
    pytest.param(dataclasses.replace(WORKERS, numprocs=0), "at least 1", id="numprocs-zero"),
    pytest.param(dataclasses.replace(WORKERS, command="  "), "command is empty", id="no-command"),
    pytest.param(
        dataclasses.replace(WORKERS, stdout_logfile_maxbytes="lots"),
        "is not a size",
        id="bad-size",
    ),
]


@pytest.mark.parametrize(("program", "message"), REFUSALS)
def test_refusals_name_the_section_and_the_rule(program: Program, message: str) -> None:
    with pytest.raises(InvalidProgram) as err:
        program.validate()
    assert message in str(err.value)
    assert f"[{program.section}]" in str(err.value)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidProgram, match="two sections are named 'work_worker'"):
        validate_all([WORKERS, dataclasses.replace(WORKERS, numprocs=1)])


def _supervisor_parse(tmp_path: Path, program: Program) -> ServerOptions:
    """Let supervisord's own parser read a config holding this (unvalidated) section."""
    text = section("supervisord", [("logfile", str(tmp_path / "s.log"))]) + section(
        program.section, program_items(program)
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return options


@pytest.mark.parametrize(
    ("program", "supervisor_says"),
    [
        pytest.param(
            dataclasses.replace(WORKERS, process_name="%(program_name)s"),
            "%(process_num) must be present within process_name",
            id="numprocs-without-process_num",
        ),
        pytest.param(
            dataclasses.replace(WORKERS, killasgroup=False),
            "Cannot set stopasgroup=true and killasgroup=false",
            id="stopasgroup-without-killasgroup",
        ),
        pytest.param(
            dataclasses.replace(LISTENER, redirect_stderr=True),
            "redirect_stderr=true",
            id="listener-redirect_stderr",
        ),
    ],
)
def test_supervisord_rejects_what_the_model_rejects(
    tmp_path: Path, program: Program, supervisor_says: str
) -> None:
    with pytest.raises(InvalidProgram):
        program.validate()
    with pytest.raises(ValueError, match=supervisor_says.replace("(", r"\(").replace(")", r"\)")):
        _supervisor_parse(tmp_path, program)


def test_supervisord_accepts_valid_programs(tmp_path: Path) -> None:
    logfile = f"{tmp_path}/%(program_name)s_%(process_num)02d.log"
    options = _supervisor_parse(tmp_path, dataclasses.replace(WORKERS, stdout_logfile=logfile))
    (group,) = options.process_group_configs
    names = [p.name for p in group.process_configs]
    assert names == [f"work_worker_{n:02d}" for n in range(4)]
    assert group.process_configs[0].stopasgroup and group.process_configs[0].killasgroup


def test_render_program_is_deterministic_and_marked_generated() -> None:
    first = render_program(WORKERS, "stack.toml")
    assert first == render_program(dataclasses.replace(WORKERS), "stack.toml")
    assert first.startswith("; Generated by `kestrelq conf` from stack.toml. Do not edit")
    assert "process_name=%(program_name)s_%(process_num)02d\nnumprocs=4\n" in first


def test_render_program_refuses_invalid_programs() -> None:
    with pytest.raises(InvalidProgram):
        render_program(dataclasses.replace(WORKERS, killasgroup=False), "stack.toml")
