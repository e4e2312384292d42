"""supervisord program sections as data, checked against supervisor's own rules.

Theory of operation: a `Program` holds the keys of one `[program:x]` or `[eventlistener:x]`
section, with supervisor's names and defaults. `validate()` refuses, with a message naming the
section and the key, every combination that supervisord would reject at start or that breaks at
run time in a way supervisord does not report:

1. `numprocs > 1` needs `%(process_num)` in `process_name` (supervisord refuses the file).
2. `stopasgroup=true` needs `killasgroup=true` (supervisord refuses the file).
3. A log file that is not seekable (`/dev/stdout`, `/dev/stderr`, `/dev/fd/N`) needs
   `*_logfile_maxbytes=0`, or rotation fails with "Illegal seek" on the first rotation.
4. An `[eventlistener:x]` never has `redirect_stderr=true` (its stdout is the event protocol;
   supervisord refuses it) and must name at least one event.
5. Several processes never share one rotated log file: each rotates it on its own and they
   overwrite each other's backups, so a real path needs `%(process_num)` too.
6. `redirect_stderr=true` and a `stderr_logfile` contradict each other.

This module imports nothing from the rest of kestrelq: supervisord tooling stands alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

AutoRestart = Literal["true", "false", "unexpected"]
SectionKind = Literal["program", "eventlistener"]

# Signals supervisord accepts for stopsignal (supervisor.datatypes.signal_number takes any
# name, but these are the ones that make sense for stopping a program).
STOP_SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")

# Event types a listener may subscribe to; the groups are what kestrelq uses, the rest of
# supervisor's list is accepted by name pattern below.
_EVENT_RE = re.compile(r"^[A-Z][A-Z_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_RE = re.compile(r"^[0-9]+(KB|MB|GB)?$")

UNSEEKABLE_PREFIXES = ("/dev/stdout", "/dev/stderr", "/dev/fd/")
SPECIAL_LOGFILES = ("AUTO", "NONE")


class InvalidProgram(ValueError):
    """A program description that supervisord would reject or that would misbehave."""


def is_unseekable(path: str) -> bool:
    """Whether a log path is a stream that cannot be rotated."""
    return path.startswith(UNSEEKABLE_PREFIXES)


@dataclass(frozen=True, slots=True)
class Program:
    """One `[program:name]` (or `[eventlistener:name]`) section.

    Defaults are supervisor's own, so a `Program` with only a name and a command renders the
    same section supervisord would assume.
    """

    name: str
    command: str
    kind: SectionKind = "program"
    process_name: str = "%(program_name)s"
    numprocs: int = 1
    directory: str | None = None
    user: str | None = None
    priority: int = 999
    autostart: bool = True
    autorestart: AutoRestart = "unexpected"
    startsecs: int = 1
    startretries: int = 3
    exitcodes: tuple[int, ...] = (0,)
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    stopasgroup: bool = False
    killasgroup: bool = False
    redirect_stderr: bool = False
    stdout_logfile: str = "AUTO"
    stdout_logfile_maxbytes: str = "50MB"
    stdout_logfile_backups: int = 10
    stderr_logfile: str | None = None
    stderr_logfile_maxbytes: str = "50MB"
    stderr_logfile_backups: int = 10
    environment: tuple[tuple[str, str], ...] = ()
    events: tuple[str, ...] = ()
    buffer_size: int = 10
    comment: str = ""

    @property
    def section(self) -> str:
        return f"{self.kind}:{self.name}"

    def validate(self) -> None:
        """Raise `InvalidProgram` naming the section and the rule it breaks."""
        problems = list(self.problems())
        if problems:
            raise InvalidProgram(f"[{self.section}]: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every rule this section breaks, as short sentences (empty when valid)."""
        out: list[str] = []
        out += self._identity_problems()
        out += self._process_problems()
        out += self._log_problems()
        out += self._listener_problems()
        return out

    def _identity_problems(self) -> list[str]:
        out = []
        if not _NAME_RE.match(self.name):
            out.append(f"name {self.name!r} may hold only letters, digits, '_', '-' and '.'")
        if not self.command.strip():
            out.append("command is empty")
        for key, value in self.environment:
            if not _ENV_KEY_RE.match(key):
                out.append(f"environment key {key!r} is not a valid variable name")
            if '"' in value or "\n" in value:
                out.append(f"environment value of {key} may not contain '\"' or a newline")
        return out

    def _process_problems(self) -> list[str]:
        out = []
        if self.numprocs < 1:
            out.append(f"numprocs must be at least 1, not {self.numprocs}")
        if self.numprocs > 1 and "%(process_num)" not in self.process_name:
            out.append(
                "numprocs > 1 needs %(process_num) in process_name, "
                "e.g. process_name=%(program_name)s_%(process_num)02d"
            )
        if self.stopasgroup and not self.killasgroup:
            out.append("stopasgroup=true needs killasgroup=true")
        if self.stopsignal not in STOP_SIGNALS:
            out.append(f"stopsignal {self.stopsignal!r} is not one of {', '.join(STOP_SIGNALS)}")
        if self.autorestart not in ("true", "false", "unexpected"):
            out.append(f"autorestart must be true, false or unexpected, not {self.autorestart!r}")
        for key in ("startsecs", "startretries", "stopwaitsecs"):
            if getattr(self, key) < 0:
                out.append(f"{key} may not be negative")
        if not self.exitcodes:
            out.append("exitcodes may not be empty")
        return out

    def _log_problems(self) -> list[str]:
        out = []
        logs = [("stdout", self.stdout_logfile, self.stdout_logfile_maxbytes)]
        if self.stderr_logfile is not None:
            logs.append(("stderr", self.stderr_logfile, self.stderr_logfile_maxbytes))
        for stream, path, maxbytes in logs:
            if not _SIZE_RE.match(maxbytes):
                out.append(f"{stream}_logfile_maxbytes {maxbytes!r} is not a size like 50MB")
            if is_unseekable(path) and maxbytes != "0":
                out.append(
                    f"{stream}_logfile={path} cannot be rotated: set {stream}_logfile_maxbytes=0"
                )
            if (
                self.numprocs > 1
                and path not in SPECIAL_LOGFILES
                and not is_unseekable(path)
                and "%(process_num)" not in path
            ):
                out.append(
                    f"{self.numprocs} processes would share the rotated file {path}: "
                    "put %(process_num)02d in its name"
                )
        if self.redirect_stderr and self.stderr_logfile is not None:
            out.append("redirect_stderr=true and a stderr_logfile contradict each other")
        return out

    def _listener_problems(self) -> list[str]:
        out = []
        if self.kind == "eventlistener":
            if self.redirect_stderr:
                out.append(
                    "an eventlistener may not set redirect_stderr=true: "
                    "its stdout carries the event protocol"
                )
            if not self.events:
                out.append("an eventlistener needs at least one event in events=")
        elif self.events:
            out.append("events= belongs in an [eventlistener:x] section, not a program")
        for event in self.events:
            if not _EVENT_RE.match(event):
                out.append(f"event {event!r} is not an event type name")
        return out


def validate_all(programs: list[Program]) -> None:
    """Validate every program, plus the rules across programs (unique names)."""
    seen: set[str] = set()
    for program in programs:
        program.validate()
        if program.name in seen:
            raise InvalidProgram(f"two sections are named {program.name!r}")
        seen.add(program.name)
