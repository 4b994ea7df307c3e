"""The production kit under deploy/ is checked by the tools that will read it, and its files
agree with each other.

- The systemd units pass `systemd-analyze verify` (their executables pointed at this
  checkout), every unit they name exists, and a broken unit fails the same check; the web
  unit's gunicorn sends systemd READY=1 from its main process (Type=notify).
- The tmpfiles.d file creates the Prometheus directory that every service names.
- The cron.d line runs what the cleanup service runs, on the timer's schedule, and works
  under /bin/sh.
- nginx accepts the rendered deploy/nginx.conf (`nginx -t`), and refuses a broken one.

A missing tool skips its tests, except in CI (CI=true), where it fails them.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.serving import free_port, nginx_binary, render_nginx_conf
from tests.helpers import needed
from tests.support.gunicorn import GUNICORN, scratch_env

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNIT_FILES = sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")])
# The name of every unit (and of the cron.d and tmpfiles.d files) starts with it.
APP = "flight-bookings"
TMPFILES = DEPLOY / "tmpfiles.d" / f"{APP}.conf"
CRON = DEPLOY / "cron.d" / APP

WEB = f"{APP}-web.service"
WORKER = f"{APP}-worker.service"
CLEANUP = f"{APP}-cleanup.service"
TIMER = f"{APP}-cleanup.timer"
ALERT = f"{APP}-alert@.service"
SERVICES = [WEB, WORKER, CLEANUP]

# The settings of a unit that name other units, by section.
REFERENCES = {
    "Unit": ["After", "Before", "Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "OnFailure"],
    "Install": ["WantedBy", "RequiredBy", "Also"],
    "Timer": ["Unit"],
}


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    needed(f"{name} (Debian: apt-get install systemd)", path is not None, checks="deploy checks")
    return path


# Units -----------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings: section -> key -> values in order (keys may repeat; an empty
    assignment resets the list, as systemd does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: continued lines are not parsed here"
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, separator, value = line.partition("=")
        assert separator and section is not None, f"{path.name}: cannot read {raw!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def setting(unit: str, section: str, key: str) -> str:
    """The one value of a setting that appears once."""
    values = parse_unit(SYSTEMD / unit).get(section, {}).get(key, [])
    assert len(values) == 1, f"{unit}: [{section}] {key}= is set {len(values)} times"
    return values[0]


def environment(unit: str) -> dict[str, str]:
    assignments = parse_unit(SYSTEMD / unit)["Service"].get("Environment", [])
    return dict(word.split("=", 1) for line in assignments for word in shlex.split(line))


def expand(name: str, unit: str) -> str:
    """The unit specifiers these files use in unit names: %n (the full name), %N (without
    its suffix), %%. Any other would need its own rule here."""
    text = name.replace("%%", "\0")
    text = text.replace("%n", unit).replace("%N", unit.rsplit(".", 1)[0])
    assert "%" not in text, f"{unit}: a specifier this test does not expand in {name!r}"
    return text.replace("\0", "%")


def referenced_units(path: Path) -> set[str]:
    """Every unit a unit file names, a timer's own service included."""
    sections = parse_unit(path)
    names = {
        expand(word, path.name)
        for section, keys in REFERENCES.items()
        for key in keys
        for line in sections.get(section, {}).get(key, [])
        for word in line.split()
    }
    if path.suffix == ".timer" and "Unit" not in sections.get("Timer", {}):
        names.add(path.with_suffix(".service").name)
    return names


def install_dir() -> str:
    """Where the units expect the checkout (and its .venv)."""
    return setting(WEB, "Service", "WorkingDirectory")


def installed_copy(tmp_path: Path) -> Path:
    """The unit files as a host would install them, but with this checkout for the app's, so
    that their executables (.venv/bin/gunicorn, .venv/bin/python) exist."""
    needed(f"{ROOT / '.venv'} (make venv)", (ROOT / ".venv" / "bin" / "gunicorn").exists(), checks="deploy checks")
    folder = tmp_path / "units"
    folder.mkdir()
    for path in UNIT_FILES:
        (folder / path.name).write_text(path.read_text().replace(install_dir(), str(ROOT)))
    return folder


def vendor_unit_dirs(analyze: str) -> list[str]:
    """Where this machine's packages put their units (network-online.target, timers.target):
    systemd's search path without /etc and /run, so that a copy of our units an admin
    installed on this machine cannot stand in for a missing one."""
    env = {key: value for key, value in os.environ.items() if key != "SYSTEMD_UNIT_PATH"}
    paths = subprocess.run(
        [analyze, "unit-paths"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return [path for path in paths if not path.startswith(("/etc/", "/run/"))]


def verify(folder: Path) -> tuple[int, list[str], str]:
    """`systemd-analyze verify` on the unit files in `folder` and on every other unit they
    name (an OnFailure= instance of our template, a timer's service, a systemd target), each
    by name, since verify loads a dependency that does not exist without a word. Answers its
    exit status, the lines of its stderr about our units, and all of its stderr.

    In a container with no systemd running (PID 1 is not systemd), verify starts a manager of
    its own in test mode, which works as it is: no flag or privilege is needed, and at the
    default log level it prints nothing for units that are fine (User=flight-bookings need
    not exist: verify looks no user up). What is set here:
    - SYSTEMD_UNIT_PATH: our units, then the distribution's (not /etc or /run; above).
    - SYSTEMD_LOG_LEVEL, _TARGET, _COLOR: its warnings reach stderr, plainly, whatever the
      caller's environment says.
    - --man=no: no man-db here, and Documentation= is not what this checks.
    - --recursive-errors=no: the distribution's units, loaded as dependencies of
      multi-user.target and the others, are not ours to fail on; each unit named on the
      command line is still checked. (Given explicitly, either way, it also makes systemd 252
      exit 1 on a setting it ignores, such as an unknown key or a bad value; left out, verify
      only warns and exits 0. The stderr lines catch those either way.)
    """
    analyze = systemd_tool("systemd-analyze")
    files = sorted(folder.iterdir())
    ours = {path.name for path in files}
    others = sorted({name for path in files for name in referenced_units(path)} - ours)
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--recursive-errors=no", *map(str, files), *others],
        env={
            **os.environ,
            "SYSTEMD_UNIT_PATH": ":".join([str(folder), *vendor_unit_dirs(analyze)]),
            "SYSTEMD_LOG_LEVEL": "info",
            "SYSTEMD_LOG_TARGET": "console",
            "SYSTEMD_LOG_COLOR": "0",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    about_ours = [line for line in result.stderr.splitlines() if APP in line or str(folder) in line]
    return result.returncode, about_ours, result.stderr


def test_the_units_are_the_ones_installed():
    assert {path.name for path in UNIT_FILES} == {*SERVICES, TIMER, ALERT}
    for unit in SERVICES:
        assert setting(unit, "Service", "WorkingDirectory") == install_dir()
        assert setting(unit, "Service", "User") == setting(unit, "Service", "Group") == APP
        assert setting(unit, "Service", "EnvironmentFile") == f"/etc/{APP}/env"
        assert shlex.split(setting(unit, "Service", "ExecStart"))[0].startswith(f"{install_dir()}/.venv/bin/")


def test_systemd_verifies_the_units(tmp_path):
    returncode, problems, stderr = verify(installed_copy(tmp_path))

    assert returncode == 0, stderr
    assert not problems, stderr


def _break_setting(unit: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / unit
        text = path.read_text()
        assert old in text, f"{unit} no longer has {old!r}: change this test"
        path.write_text(text.replace(old, new, 1))

    return apply


def _remove(unit: str) -> Callable[[Path], None]:
    return lambda folder: (folder / unit).unlink()


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(_break_setting(TIMER, "OnCalendar=*:0/", "OnCalendar=*:0/x"), id="calendar"),
        pytest.param(_break_setting(WEB, "/.venv/bin/gunicorn ", "/.venv/bin/no-such-gunicorn "), id="executable"),
        pytest.param(_break_setting(WORKER, "KillSignal=", "KilSignal="), id="unknown-key"),
        pytest.param(_break_setting(WEB, "KillMode=mixed", "KillMode=gently"), id="bad-value"),
        pytest.param(_break_setting(CLEANUP, f"OnFailure={APP}-alert@", "OnFailure=alert@"), id="on-failure"),
        pytest.param(_remove(ALERT), id="no-alert-template"),
        pytest.param(_remove(CLEANUP), id="no-timer-service"),
    ],
)
def test_systemd_refuses_a_broken_unit(tmp_path, breakage):
    """The check above can fail. Some of these pass a plain `systemd-analyze verify` of the
    files: a missing OnFailure= unit or timer's service (exit 0, not a word), an unknown key
    or a bad value (exit 0, a warning). Each must fail ours."""
    folder = installed_copy(tmp_path)
    breakage(folder)

    returncode, problems, stderr = verify(folder)

    assert returncode != 0 or problems, stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_a_failed_service_starts_the_alert(unit):
    alert = expand(setting(unit, "Unit", "OnFailure"), unit)

    template, _, suffix = ALERT.partition("@")
    assert alert == f"{template}@{unit}{suffix}"
    assert (SYSTEMD / ALERT).exists()


def test_gunicorn_tells_systemd_it_is_ready_from_its_main_process(tmp_path):
    """Type=notify with NotifyAccess=main: the command of the web unit, started as systemd
    starts it (NOTIFY_SOCKET set), sends READY=1 from the process systemd started."""
    assert setting(WEB, "Service", "Type") == "notify"
    assert setting(WEB, "Service", "NotifyAccess") == "main"
    executable, *arguments = shlex.split(setting(WEB, "Service", "ExecStart"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    listener.settimeout(60)
    env = scratch_env(tmp_path, NOTIFY_SOCKET=str(tmp_path / "notify"), GUNICORN_BIND=f"127.0.0.1:{free_port()}")
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as output:
        server = subprocess.Popen([GUNICORN, *arguments], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        message, ancillary, _, _ = listener.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    except TimeoutError:
        pytest.fail(f"no READY=1 from gunicorn: {log.read_text()}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        listener.close()

    assert Path(executable).name == Path(GUNICORN).name
    assert "READY=1" in message.decode().splitlines()
    ((level, kind, credentials),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    assert struct.unpack("3i", credentials)[0] == server.pid


def test_the_alert_names_the_failed_unit_in_the_journal():
    command = setting(ALERT, "Service", "ExecStart")

    assert "-p crit" in command or "user.crit" in command
    assert "journalctl -u %i" in command


# Schedules and commands ---------------------------------------------------------------------


def cleanup_interval_minutes() -> int:
    """CLEANUP_INTERVAL_MINUTES's default, which admin's cleanup page assumes."""
    (value,) = re.findall(r"^CLEANUP_INTERVAL_MINUTES=(\d+)$", (ROOT / ".env.example").read_text(), re.M)
    return int(value)


def test_the_timer_runs_cleanup_every_interval():
    assert setting(TIMER, "Timer", "OnCalendar") == f"*:0/{cleanup_interval_minutes()}"
    assert CLEANUP in referenced_units(SYSTEMD / TIMER)


def cron_entry() -> tuple[str, str, str]:
    """The one job of the cron.d file: its schedule, user and command."""
    jobs = [
        line
        for line in CRON.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^\w+\s*=", line)
    ]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 6)
    return " ".join(fields[:5]), fields[5], fields[6]


def test_the_cron_file_is_one_cron_reads():
    """cron skips a file in /etc/cron.d whose name has a dot, and a last line with no newline."""
    assert "." not in CRON.name
    assert CRON.read_text().endswith("\n")
    # A % in a crontab command is a newline (the rest goes to the command's stdin).
    assert "%" not in cron_entry()[2]


def test_cron_runs_what_the_timer_runs():
    schedule, user, command = cron_entry()
    steps = command.split(" && ")
    words = shlex.split(steps[-1])
    assignments = dict(word.split("=", 1) for word in words if re.match(r"^\w+=", word))
    argv = words[len(assignments) :]
    working_dir = setting(CLEANUP, "Service", "WorkingDirectory")

    assert schedule == f"*/{cleanup_interval_minutes()} * * * *"
    assert user == setting(CLEANUP, "Service", "User")
    assert steps[0] == f"cd {working_dir}"
    assert f". {setting(CLEANUP, 'Service', 'EnvironmentFile')}" in steps
    assert assignments == environment(CLEANUP)
    assert [f"{working_dir}/{argv[0]}", *argv[1:]] == shlex.split(setting(CLEANUP, "Service", "ExecStart"))


def test_the_cron_line_runs_under_sh_with_the_environment_file(tmp_path):
    """The line itself, under /bin/sh as cron runs it, with this checkout for the app's and
    the environment file written as its comment says (.env.example's keys, values quoted),
    the command printing the environment it was given instead of cleaning up."""
    env_file = tmp_path / "env"
    example = (ROOT / ".env.example").read_text()
    pairs = dict(re.findall(r"^(\w+)=(.*)$", example, re.M))
    env_file.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in pairs.items()))
    _, _, command = cron_entry()
    arguments = shlex.join(shlex.split(setting(CLEANUP, "Service", "ExecStart"))[1:])
    show = "-c 'import json, os; print(json.dumps({**os.environ, \"cwd\": os.getcwd()}))'"
    assert arguments in command
    command = command.replace(arguments, show)
    command = command.replace(setting(CLEANUP, "Service", "EnvironmentFile"), str(env_file))
    command = command.replace(install_dir(), str(ROOT))

    result = subprocess.run(["/bin/sh", "-c", command], env={}, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert not result.stderr
    seen = json.loads(result.stdout)
    assert seen["cwd"] == str(ROOT)
    assert {key: seen.get(key) for key in pairs} == pairs
    assert any(set(value) & set(" <>&;$") for value in pairs.values())  # a value sh would misread unquoted
    for key, value in environment(CLEANUP).items():
        assert seen[key] == value


# Prometheus's directory ------------------------------------------------------------------


def tmpfiles_dirs() -> dict[str, tuple[str, str]]:
    """The directories the tmpfiles.d file creates: path -> (mode, user)."""
    dirs = {}
    for line in TMPFILES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, path, mode, user, *_ = line.split()
            assert kind == "d", line
            dirs[path] = (mode, user)
    return dirs


def test_every_service_counts_in_the_directory_tmpfiles_creates():
    dirs = tmpfiles_dirs()
    metrics = {unit: environment(unit).get("PROMETHEUS_MULTIPROC_DIR") for unit in SERVICES}
    (directory,) = set(metrics.values())

    assert directory in dirs, metrics
    assert Path(directory).parent.as_posix() in dirs  # /run/<name> made first, not by a unit
    for unit in SERVICES:
        assert dirs[directory] == ("0750", setting(unit, "Service", "User"))
        assert "RuntimeDirectory" not in parse_unit(SYSTEMD / unit)["Service"]


def test_systemd_tmpfiles_creates_the_directories(tmp_path):
    """systemd-tmpfiles reads the file and makes the directories, in a root of its own whose
    /etc/passwd has the service's user (ours: the uid this test may chown to)."""
    tmpfiles = systemd_tool("systemd-tmpfiles")
    user = setting(WEB, "Service", "User")
    uid = 4242 if os.geteuid() == 0 else os.geteuid()
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\n{user}:x:{uid}:{gid}::/:/bin/false\n")
    (tmp_path / "etc" / "group").write_text(f"root:x:0:\n{user}:x:{gid}:\n")

    result = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    for path, (mode, _) in tmpfiles_dirs().items():
        made = (tmp_path / path.lstrip("/")).stat()
        assert (oct(made.st_mode & 0o7777), made.st_uid, made.st_gid) == (oct(int(mode, 8)), uid, gid), path


# nginx ---------------------------------------------------------------------------------


def rendered_nginx_conf(tmp_path: Path) -> Path:
    """deploy/nginx.conf filled in as scripts/serving.py's Nginx.start fills it."""
    try:
        nginx_binary()
    except RuntimeError as missing:
        needed(str(missing), False, checks="deploy checks")
    run_dir = tmp_path / "nginx"
    run_dir.mkdir()
    conf = run_dir / "nginx.conf"
    conf.write_text(
        render_nginx_conf(
            {
                "USER": pwd.getpwuid(os.geteuid()).pw_name,
                "RUN_DIR": str(run_dir),
                "LISTEN": f"127.0.0.1:{free_port()}",
                "UPSTREAM": f"127.0.0.1:{free_port()}",
                "MAX_CONNS": "64",
            }
        )
    )
    return conf


def nginx_test(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(conf.parent), "-c", str(conf)], capture_output=True, text=True, timeout=60
    )


def test_nginx_accepts_the_config(tmp_path):
    result = nginx_test(rendered_nginx_conf(tmp_path))

    assert result.returncode == 0, result.stderr


def test_nginx_refuses_a_broken_config(tmp_path):
    conf = rendered_nginx_conf(tmp_path)
    conf.write_text(conf.read_text().replace("location = /metrics {", "location = /metrics {\n no_such_thing on;"))

    result = nginx_test(conf)

    assert result.returncode != 0
    assert "no_such_thing" in result.stderr


def test_metrics_goes_to_the_probes_upstream_never_shed():
    code = "\n".join(
        line for line in (DEPLOY / "nginx.conf").read_text().splitlines() if not line.lstrip().startswith("#")
    )

    assert re.search(r"location = /metrics \{\s*proxy_pass http://bookings_probes;\s*\}", code)
