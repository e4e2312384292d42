"""The supervisord programs of a stack: the queue server, each queue's workers, the listener.

One function per kind of program, from a validated `Stack`; `programs()` picks those the
stack's `only` asks for. The keys that are supervisor's defaults are left to `Program`.
"""

from __future__ import annotations

from kestrelq.supervisord.model import Program
from kestrelq.supervisord.stack import QueueSpec, Stack, here_path, server_list


def _log(stack: Stack, name: str, stream: str = "/dev/stdout") -> tuple[str, str, int]:
    """(logfile, maxbytes, backups) for one program in the stack's mode.

    In a container the program writes to `stream` (the container's log); on a host, to
    `<log_dir>/<name>.log`, rotated.
    """
    if stack.mode == "container":
        return stream, "0", 0
    return f"{here_path(stack.log_dir, 1)}/{name}.log", stack.log_maxbytes, stack.log_backups


def queue_program(stack: Stack) -> Program:
    logfile, maxbytes, backups = _log(stack, "queue")
    command = (
        f"{stack.python} -m kestrelq serve --config {here_path('kestrelq.toml', 1)}"
        f" --host {stack.listen_host} --port {stack.port}"
        f" --data-dir {here_path(stack.data_dir, 1)}"
        f"{_server_security(stack)}"
    )
    return Program(
        name="queue",
        command=command,
        user=stack.user or None,
        priority=10,
        autorestart="true",
        startsecs=1,
        startretries=10,
        stopsignal="TERM",
        stopwaitsecs=stack.queue_stopwaitsecs,
        redirect_stderr=True,
        stdout_logfile=logfile,
        stdout_logfile_maxbytes=maxbytes,
        stdout_logfile_backups=backups,
        environment=(("PYTHONUNBUFFERED", "1"),),
        comment=(
            "The queue server. Lowest priority number: started first, stopped last.\n"
            "SIGTERM makes it stop accepting, answer what is in flight and sync its journals."
        ),
    )


def _server_security(stack: Stack) -> str:
    """The queue's login and TLS options from [security], as `kestrelq serve` flags."""
    flags: list[str] = []
    for key in ("auth_file", "tls_cert", "tls_key", "tls_ca"):
        if getattr(stack, key):
            flags.append(f"--{key.replace('_', '-')} {here_path(getattr(stack, key), 1)}")
    if stack.admin_users:
        flags.append(f"--admin-users {stack.admin_users}")
    if stack.tls_port:
        flags.append(f"--tls-port {stack.tls_port}")
    if stack.tls_verify != "none":
        flags.append(f"--tls-verify {stack.tls_verify}")
    if not stack.plain:
        flags.append("--no-plain")
    return "".join(f" {flag}" for flag in flags)


# The workers' client settings from [security], as the environment kestrelq.credentials reads.
_CLIENT_ENV = (
    ("client_user", "KESTRELQ_USER"),
    ("client_password_file", "KESTRELQ_PASSWORD_FILE"),
    ("client_tls_ca", "KESTRELQ_TLS_CA"),
    ("client_tls_cert", "KESTRELQ_TLS_CERT"),
    ("client_tls_key", "KESTRELQ_TLS_KEY"),
)


def _client_environment(stack: Stack) -> tuple[tuple[str, str], ...]:
    env = []
    for key, name in _CLIENT_ENV:
        value = getattr(stack, key)
        if value:
            env.append((name, value if key == "client_user" else here_path(value, 1)))
    return tuple(env)


def worker_program_name(queue: str) -> str:
    """The program of a queue's workers, `<queue>_worker`.

    A fanout child's `+` becomes `.` (never part of a queue name, so no two queues meet):
    supervisord's status page puts program names in URLs, where `+` reads as a space.
    """
    return f"{queue.replace('+', '.')}_worker"


# The directory the workers record their metrics in and the exporter reads (prometheus_client's
# multiprocess mode, kestrelq.worker.metrics): under the run directory, a tmpfs in a container.
WORKER_METRICS_DIR = "worker-metrics"


def _worker_metrics_dir(stack: Stack) -> str:
    return f"{here_path(stack.run_dir, 1)}/{WORKER_METRICS_DIR}"


def _connect(stack: Stack) -> str:
    """Where the workers read: every server of connect_servers, else the one server."""
    if stack.connect_servers:
        return f"--servers {server_list(stack.connect_servers)}"
    return f"--host {stack.connect_host} --port {stack.port}"


def worker_program(stack: Stack, queue: QueueSpec) -> Program:
    name = worker_program_name(queue.name)
    logfile, maxbytes, backups = _log(stack, "%(program_name)s_%(process_num)02d")
    # The worker's warm stop must end (the message given back by the worker itself) before
    # supervisord's SIGKILL at stopwaitsecs: a few seconds less, at most half of it less.
    stop_timeout_s = queue.stopwaitsecs - min(5.0, queue.stopwaitsecs / 2)
    settings = dict(queue.settings)
    # So the worker can say when it gives a message up to the dead-letter queue.
    dead_letter = "".join(
        f" --{key.replace('_', '-')} {settings[key]}"
        for key in ("max_deliveries", "dead_letter")
        if settings.get(key)
    )
    command = queue.command or (
        f"{stack.python} -m kestrelq work {queue.name} --handler tasks:handle"
        f" {_connect(stack)} --wait-ms {queue.wait_ms}"
        f" --stop-timeout-s {stop_timeout_s:g}{dead_letter}"
    )
    return Program(
        name=name,
        command=command,
        process_name="%(program_name)s_%(process_num)02d",
        numprocs=queue.workers,
        directory=here_path(stack.app_dir, 1),
        user=stack.user or None,
        priority=100,
        # true, not unexpected: a worker that exits 0 (burst mode, recycling) comes back too.
        autorestart="true",
        startsecs=1,
        startretries=10,
        stopsignal="TERM",
        # The worker finishes and confirms its current message on the first SIGTERM, for at
        # most its --stop-timeout-s (above), then gives it back and exits before this SIGKILL.
        stopwaitsecs=queue.stopwaitsecs,
        stopasgroup=True,
        killasgroup=True,
        redirect_stderr=True,
        stdout_logfile=logfile,
        stdout_logfile_maxbytes=maxbytes,
        stdout_logfile_backups=backups,
        environment=(
            ("PYTHONUNBUFFERED", "1"),
            *_client_environment(stack),
            *_metrics_environment(stack),
        ),
        comment=(
            f"{queue.workers} consumers of queue {queue.name!r}. They start after the queue and\n"
            "reconnect with backoff while it is down (supervisord has no readiness wait)."
        ),
    )


def _metrics_environment(stack: Stack) -> tuple[tuple[str, str], ...]:
    if not stack.worker_metrics_port:
        return ()
    return (("PROMETHEUS_MULTIPROC_DIR", _worker_metrics_dir(stack)),)


def worker_metrics_program(stack: Stack) -> Program:
    logfile, maxbytes, backups = _log(stack, "worker_metrics")
    return Program(
        name="worker_metrics",
        command=(
            f"{stack.python} -m kestrelq worker-metrics --host {stack.worker_metrics_host}"
            f" --port {stack.worker_metrics_port}"
        ),
        user=stack.user or None,
        priority=50,
        autorestart="true",
        startsecs=1,
        startretries=10,
        stopsignal="TERM",
        redirect_stderr=True,
        stdout_logfile=logfile,
        stdout_logfile_maxbytes=maxbytes,
        stdout_logfile_backups=backups,
        environment=(("PYTHONUNBUFFERED", "1"), *_metrics_environment(stack)),
        comment=(
            "The workers' metrics for Prometheus: each worker records what it handled in\n"
            "PROMETHEUS_MULTIPROC_DIR, and this serves their sum on /metrics. Empty that\n"
            "directory before supervisord starts, never while it runs (docs/metrics.md)."
        ),
    )


def listener_program(stack: Stack) -> Program:
    marker = f"{here_path(stack.run_dir, 1)}/FATAL"
    command = f"{stack.python} -m kestrelq.supervisord.listener --marker {marker}"
    if stack.mode == "container":
        command += " --stop-supervisord"
    stderr, maxbytes, backups = _log(stack, "fatal_listener", stream="/dev/stderr")
    return Program(
        name="fatal_listener",
        command=command,
        kind="eventlistener",
        events=("PROCESS_STATE_FATAL",),
        user=stack.user or None,
        priority=1,
        autorestart="true",
        # stdout is the event protocol, not a log; the listener logs on stderr.
        stdout_logfile="NONE",
        stdout_logfile_maxbytes="0",
        stdout_logfile_backups=0,
        stderr_logfile=stderr,
        stderr_logfile_maxbytes=maxbytes,
        stderr_logfile_backups=backups,
        comment=(
            "supervisord never exits or alerts when a program gives up (FATAL): this listener\n"
            "logs it and writes a marker file"
            + (
                ", then stops supervisord so the container restarts."
                if stack.mode == "container"
                else "."
            )
        ),
    )


def programs(stack: Stack) -> list[Program]:
    """The programs of the stack, filtered by `only`."""
    out: list[Program] = []
    if stack.only in ("all", "queue"):
        out.append(queue_program(stack))
    if stack.only in ("all", "workers"):
        workers = [worker_program(stack, q) for q in stack.queues if q.workers > 0]
        if workers and stack.worker_metrics_port:
            workers.append(worker_metrics_program(stack))
        out += workers
    out.append(listener_program(stack))
    return out
