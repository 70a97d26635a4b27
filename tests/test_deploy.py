"""The operator files: Containerfile, compose.yaml, deploy/foreman.service and the launchd plist.

They are parsed, not retyped, and checked against each other and against foreman's settings
(ports, the data path, every FOREMAN_* name and value). Then foreman's wheel, built from what
the Containerfile copies, is installed into a clean venv and run with the image's own
ENTRYPOINT, CMD, ENV and HEALTHCHECK: it must start degraded without a target, turn healthy,
stop with status 0 on SIGTERM and leave its database in the data directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from foreman.settings import GRACE_MARGIN, OPTIONS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {option.env: option for option in OPTIONS}
#: The longest a graceful stop takes with the default FOREMAN_GRACE, hypercorn's margin included.
DEFAULT_STOP = float(SETTINGS["FOREMAN_GRACE"].default or 0) + GRACE_MARGIN
FOREMAN_NAME = re.compile(r"\bFOREMAN_[A-Z0-9_]*[A-Z0-9]\b")
OPERATOR_FILES = [
    "Containerfile",
    "compose.yaml",
    "deploy/foreman.service",
    "deploy/dev.foreman.plist",
]


# --- parsing ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` stage of the Containerfile: its base image, name and instructions."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage FROM {self.image}: {found}"
        return found[0]

    def exec_form(self, keyword: str) -> list[str]:
        """An ENTRYPOINT or CMD, which must be in exec form (a JSON array)."""
        value = json.loads(self.one(keyword))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), keyword
        return value

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                name, sep, value = item.partition("=")
                assert sep, f"ENV {args!r}: use the NAME=value form"
                env[name] = value
        return env

    def healthcheck(self) -> list[str]:
        match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", self.one("HEALTHCHECK"), re.S)
        assert match, "HEALTHCHECK must be [--options] CMD [exec form]"
        command = json.loads(match[2])
        assert isinstance(command, list) and all(isinstance(c, str) for c in command)
        return command


@dataclass
class Containerfile:
    args: dict[str, str]  # the ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction: comments dropped, continuations joined."""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        pending = ""
        yield keyword.upper(), " ".join(args.split()) if keyword.upper() == "RUN" else args.strip()
    assert not pending, "the Containerfile ends in a continuation"


def parse_containerfile() -> Containerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions((ROOT / "Containerfile").read_text()):
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            stages.append(Stage(image.strip(), name.strip() or None))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return Containerfile(args, stages)


def parse_unit() -> dict[str, list[tuple[str, str]]]:
    """The systemd unit's sections, each a list of (key, value): keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    section = None
    for raw in (ROOT / "deploy/foreman.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            sections[section] = []
            continue
        assert section is not None and "=" in line, f"not a unit file line: {raw!r}"
        key, _, value = line.partition("=")
        sections[section].append((key.strip(), value.strip()))
    return sections


def unit_values(sections: dict[str, list[tuple[str, str]]], key: str) -> list[str]:
    return [value for k, value in sections["Service"] if k == key]


def unit_value(sections: dict[str, list[tuple[str, str]]], key: str) -> str:
    values = unit_values(sections, key)
    assert len(values) == 1, f"expected one {key}= in [Service]: {values}"
    return values[0]


def unit_env(sections: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    return dict(
        item.partition("=")[::2]
        for line in unit_values(sections, "Environment")
        for item in shlex.split(line)
    )


def parse_compose() -> dict:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(compose, dict) and set(compose["services"]) == {"ollama", "foreman"}
    return compose


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: str(value) for name, value in env.items()}


def parse_plist() -> dict:
    with (ROOT / "deploy/dev.foreman.plist").open("rb") as file:
        return plistlib.load(file)


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|min)?", value.strip())
    assert match, f"not a duration in seconds or minutes: {value!r}"
    return float(match[1]) * (60 if match[2] in ("m", "min") else 1)


# --- the files agree -----------------------------------------------------------------------


def test_the_readme_links_the_operator_files() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in ("deploy/README.md", "Containerfile", "compose.yaml"):
        assert f"]({target})" in readme
        assert (ROOT / target).is_file()


def test_the_deploy_readme_links_only_files_that_exist() -> None:
    readme = ROOT / "deploy/README.md"
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme.read_text())
    assert links
    for link in links:
        assert (readme.parent / link).is_file(), link


@pytest.mark.parametrize("path", [*OPERATOR_FILES, "deploy/README.md"])
def test_every_foreman_variable_named_is_a_setting(path: str) -> None:
    names = set(FOREMAN_NAME.findall((ROOT / path).read_text()))
    assert names, f"{path} names no FOREMAN_* setting"
    assert names <= set(SETTINGS), f"{path}: not settings: {sorted(names - set(SETTINGS))}"


def settings_set_by_each_file() -> list[tuple[str, str, str]]:
    """(file, variable, value) for every FOREMAN_* variable the operator files set."""
    found = [("Containerfile", *item) for item in parse_containerfile().runtime.env().items()]
    found += [
        ("compose.yaml", *item)
        for item in compose_env(parse_compose()["services"]["foreman"]).items()
    ]
    found += [("foreman.service", *item) for item in unit_env(parse_unit()).items()]
    found += [
        ("dev.foreman.plist", *item) for item in parse_plist()["EnvironmentVariables"].items()
    ]
    return [(where, name, value) for where, name, value in found if name.startswith("FOREMAN_")]


def test_every_foreman_value_set_is_valid() -> None:
    for where, name, value in settings_set_by_each_file():
        assert name in SETTINGS, f"{where}: {name} is not a setting"
        option = SETTINGS[name]
        if option.secret or "${" in value:  # placeholders and compose's interpolation
            continue
        try:
            option.parse(value)
        except ValueError as exc:
            pytest.fail(f"{where}: {name}={value!r}: {exc}")


def test_the_image_serves_on_its_exposed_port_and_keeps_state_in_its_volume() -> None:
    runtime = parse_containerfile().runtime
    env = runtime.env()
    assert env["FOREMAN_LISTEN"] == "0.0.0.0:8080"
    assert runtime.one("EXPOSE").split("/")[0] == str(port_of(env["FOREMAN_LISTEN"]))
    volume = runtime.one("VOLUME")
    volumes = json.loads(volume) if volume.startswith("[") else volume.split()
    assert volumes == [env["FOREMAN_DATA_DIR"]] == ["/data"]


def test_the_image_is_multi_stage_slim_non_root_and_installs_only_the_wheel() -> None:
    containerfile = parse_containerfile()
    assert len(containerfile.stages) >= 2
    build, runtime = containerfile.stages[0], containerfile.runtime
    assert build.name and any("pip wheel" in run for run in build.all("RUN"))
    for stage in (build, runtime):
        image = re.sub(r"\$\{(\w+)\}", lambda m: containerfile.args[m[1]], stage.image)
        match = re.fullmatch(r"(?:[\w.-]+/)*python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
        assert match and int(match[1]) >= 11, f"not a slim Python 3.11+ image: {image}"
    # the runtime stage takes nothing from the source tree: only the build stage's wheels
    assert not runtime.all("COPY") and not runtime.all("ADD")
    installs = [run for run in runtime.all("RUN") if "pip install" in run]
    assert len(installs) == 1
    assert f"from={build.name}" in installs[0] and "--no-index" in installs[0]
    user = runtime.one("USER").split(":")[0]
    assert user not in ("", "root", "0")
    # exec form, so that foreman itself is PID 1 and receives SIGTERM
    assert runtime.exec_form("ENTRYPOINT") == ["foreman"]
    assert runtime.exec_form("CMD") == ["serve"]


def test_the_image_builds_from_what_the_build_context_lets_through() -> None:
    build = parse_containerfile().stages[0]
    sources = [source for copy in build.all("COPY") for source in copy.split()[:-1]]
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert sources and set(sources) <= allowed
    assert {"pyproject.toml", "foreman"} <= set(sources)
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources  # setuptools reads it for the wheel's metadata


def test_the_healthcheck_asks_healthz_on_foremans_port() -> None:
    command = parse_containerfile().runtime.healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2] and "FOREMAN_LISTEN" in command[2]
    assert "curl" not in command[2] and "urllib" in command[2]


def test_compose_runs_foreman_from_the_containerfile_in_front_of_a_private_ollama() -> None:
    compose = parse_compose()
    ollama, foreman = compose["services"]["ollama"], compose["services"]["foreman"]
    runtime = parse_containerfile().runtime
    image_env = runtime.env()

    assert ollama["image"].split(":")[0].endswith("ollama/ollama")
    assert compose_env(ollama)["OLLAMA_MAX_LOADED_MODELS"] == "2"
    assert "ports" not in ollama and "network_mode" not in ollama  # never on the host
    ollama_volumes = [v.split(":") for v in ollama["volumes"]]
    assert [target for _, target, *_ in ollama_volumes] == ["/root/.ollama"]
    assert all(source in compose["volumes"] for source, *_ in ollama_volumes)

    assert foreman["build"]["dockerfile"] == "Containerfile"
    assert (ROOT / foreman["build"].get("context", ".") / "Containerfile").is_file()
    assert "ollama" in foreman["depends_on"]

    env = {**image_env, **compose_env(foreman)}
    assert env["FOREMAN_OLLAMA_URL"] == "http://ollama:11434"
    assert env["FOREMAN_TOKEN"].startswith("${FOREMAN_TOKEN:?")  # compose refuses to run without

    [published] = foreman["ports"]
    container_port = str(published).split(":")[-1].split("/")[0]
    exposed = runtime.one("EXPOSE").split("/")[0]
    assert container_port == exposed == str(port_of(env["FOREMAN_LISTEN"]))

    [mount] = foreman["volumes"]
    source, target = mount.split(":")[:2]
    assert source in compose["volumes"]  # a named volume, not a directory of the host
    assert target == env["FOREMAN_DATA_DIR"] == runtime.one("VOLUME")

    assert seconds(foreman["stop_grace_period"]) > DEFAULT_STOP


def test_the_systemd_unit_runs_foreman_serve_hardened_with_its_state_directory() -> None:
    unit = parse_unit()
    executable, *args = shlex.split(unit_value(unit, "ExecStart"))
    assert executable.startswith("/") and executable.endswith("/foreman")
    assert args == parse_containerfile().runtime.exec_form("CMD")

    assert unit_value(unit, "DynamicUser") == "yes"
    state = unit_value(unit, "StateDirectory")
    assert unit_env(unit)["FOREMAN_DATA_DIR"] == f"/var/lib/{state}" == "/var/lib/foreman"
    assert unit_value(unit, "EnvironmentFile") == "-/etc/foreman/foreman.env"
    assert unit_value(unit, "Restart") == "on-failure"
    assert unit_value(unit, "RestartPreventExitStatus") == "2"  # an invalid setting
    assert seconds(unit_value(unit, "TimeoutStopSec")) > DEFAULT_STOP

    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit_value(unit, key) == value, key
    assert set(unit_value(unit, "RestrictAddressFamilies").split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    assert "@system-service" in unit_values(unit, "SystemCallFilter")
    assert ("WantedBy", "multi-user.target") in unit["Install"]


def test_the_launchd_agent_keeps_foreman_serve_running_beside_ollama() -> None:
    plist = parse_plist()
    assert plist["Label"] == "dev.foreman"
    executable, *args = plist["ProgramArguments"]
    assert executable.endswith("/foreman")
    assert args == parse_containerfile().runtime.exec_form("CMD")
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # again after a crash, not a stop
    assert plist["ExitTimeOut"] > DEFAULT_STOP
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert "/Library/Logs/" in plist[key]

    env = plist["EnvironmentVariables"]
    assert env["FOREMAN_OLLAMA_URL"] == "http://127.0.0.1:11434"
    if not env["FOREMAN_LISTEN"].startswith(("127.", "[::1]", "localhost")):
        # on the network: the placeholder must be replaced, or foreman refuses to start
        with pytest.raises(ValueError):
            SETTINGS["FOREMAN_TOKEN"].parse(env["FOREMAN_TOKEN"])


# --- the wheel, run as the image runs it ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Installed:
    wheel: Path
    venv: Path
    bin: Path
    cwd: Path

    def env(self, **changes: str) -> dict[str, str]:
        """The test's environment without FOREMAN_* and PYTHON* settings, the venv first on PATH."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("FOREMAN_", "PYTHON"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **changes}

    def which(self, program: str) -> str:
        found = shutil.which(program, path=str(self.bin))
        assert found, f"{program} is not in the clean venv's bin"
        return found


def the_build_backend_is_installed() -> None:
    """Skip unless this venv has the build backend pyproject.toml asks for (offline build)."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is None or not requirement.specifier.contains(version):
            pytest.skip(
                f"building the wheel offline needs {requirement} in {sys.prefix} "
                f"(found {version}); add it to the dev extras"
            )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """foreman's wheel, built from what the Containerfile copies, alone in a clean venv.

    The dependencies come from this venv through a .pth file, which the clean venv reads after
    its own site-packages: the wheel's foreman wins over this venv's editable install.
    """
    the_build_backend_is_installed()
    base = tmp_path_factory.mktemp("wheel")
    source, wheels, clean, cwd = base / "src", base / "wheels", base / "venv", base / "cwd"
    cwd.mkdir()
    build = parse_containerfile().stages[0]
    for copy in build.all("COPY"):
        *sources, destination = copy.split()
        for name in sources:
            origin = ROOT / name
            target = source / destination.rstrip("/") / (name if destination.endswith("/") else "")
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)),
        ],
        check=True,
        timeout=120,
        cwd=cwd,
    )
    [wheel] = wheels.glob("foreman-*.whl")

    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(clean)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(clean / "bin" / "python")),
            *("install", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-index"),
            str(wheel),
        ],
        check=True,
        timeout=120,
        cwd=cwd,
    )
    site_packages = subprocess.run(
        [
            clean / "bin" / "python",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages) / "_foreman_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    return Installed(wheel, clean, clean / "bin", cwd)


def test_the_wheel_holds_the_package_its_migrations_and_the_command(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "foreman = foreman.cli:main" in wheel.read(entry_points).decode()
    package = ROOT / "foreman"
    shipped = {
        path.relative_to(ROOT).as_posix()
        for path in [*package.rglob("*.py"), *package.glob("store/migrations/*.sql")]
        if "__pycache__" not in path.parts
    }
    assert any(name.endswith(".sql") for name in shipped)
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    assert not any(name.startswith("tests/") for name in names)

    where = subprocess.run(
        [installed.which("python"), "-c", "import foreman; print(foreman.__file__)"],
        env=installed.env(),
        cwd=installed.cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve())


def test_the_installed_command_prints_the_version(installed: Installed) -> None:
    init = (ROOT / "foreman/__init__.py").read_text()
    [version] = re.findall(r'^__version__ = "([^"]+)"$', init, re.M)
    result = subprocess.run(
        [installed.which("foreman"), "--version"],
        env=installed.env(),
        cwd=installed.cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"foreman, version {version}"


def test_the_image_command_starts_degraded_turns_healthy_and_stops_cleanly(
    installed: Installed, tmp_path: Path
) -> None:
    runtime = parse_containerfile().runtime
    image_env = runtime.env()
    port = free_port()
    data_dir = tmp_path / "data"  # not there yet: foreman creates it
    # The container's environment, moved to this machine: loopback and a free port for the
    # listen address, a temporary directory for the volume, and no Ollama at all.
    listen_host, _, _ = image_env["FOREMAN_LISTEN"].rpartition(":")
    assert listen_host == "0.0.0.0"
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        target = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = installed.env(
            **{
                **image_env,
                "FOREMAN_LISTEN": f"127.0.0.1:{port}",
                "FOREMAN_DATA_DIR": str(data_dir),
                "FOREMAN_OLLAMA_URL": target,
            }
        )
        program, *args = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
        check_program, *check_args = runtime.healthcheck()
        healthcheck = [installed.which(check_program), *check_args]

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                healthcheck, env=env, cwd=installed.cwd, capture_output=True, text=True, timeout=10
            )

        log = tmp_path / "foreman.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [installed.which(program), *args],
                env=env,
                cwd=installed.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            deadline = time.monotonic() + 30
            while (result := check()).returncode != 0:
                assert process.poll() is None, (
                    f"foreman exited {process.returncode}:\n{log.read_text()}"
                )
                assert time.monotonic() < deadline, (
                    f"never healthy: {result.stderr}\n{log.read_text()}"
                )
                time.sleep(0.1)

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                assert response.status == 200
                health = json.load(response)
            assert health["status"] == "degraded", health
            assert health["target"] == target and health["error"]

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert check().returncode != 0  # the healthcheck notices a foreman that is gone
    logged = log.read_text()
    assert "starting degraded" in logged and "Traceback" not in logged
    database = data_dir / "foreman.db"
    assert database.is_file()
    migrations = sorted((ROOT / "foreman/store/migrations").glob("*.sql"))
    with closing(sqlite3.connect(database)) as db:
        [[schema]] = db.execute("PRAGMA user_version").fetchall()
    assert schema == int(migrations[-1].name.split("_")[0])  # every migration shipped and ran
