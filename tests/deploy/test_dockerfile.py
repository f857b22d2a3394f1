"""The Dockerfile: hadolint-clean, the contract's shape, and its entry command really working.

No Docker engine runs here, so the integration tests rebuild what the builder stage builds
(the wheel, installed with ``-c requirements.lock`` into a fresh venv) and run the image's
ENTRYPOINT + CMD with the image's ENV, then the image's HEALTHCHECK command against it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_VENV = "/opt/venv"


# --------------------------------------------------------------------------- a tiny parser


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]

    def one(self, instruction: str) -> str:
        found = self.all(instruction)
        assert len(found) == 1, f"expected one {instruction} in stage {self.name}, got {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (``$PATH``-style references left as written)."""
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV key=value, got {token!r}"
                out[key] = value
        return out


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage; comments dropped, backslash continuations joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        args = args.strip()
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert m, f"unexpected FROM {args!r}"
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        else:
            assert stages, f"{instr} before FROM"
            stages[-1].instructions.append((instr, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    args = stage.one("HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert m, f"HEALTHCHECK must use the exec form: {args}"
    return exec_form(m.group(1))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# --------------------------------------------------------------------------- static checks


def test_hadolint_is_clean(tool) -> None:
    result = tool("hadolint", "--no-color", DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_multi_stage_on_python_312_slim(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.base == final.base == "python:3.12-slim"
    assert builder.name == "builder"
    run = " ".join(builder.all("RUN"))
    assert "pip wheel" in run and f"{IMAGE_VENV}/bin/pip install" in run
    assert "--constraint requirements.lock" in run
    # The final stage gets the venv and nothing else from the builder.
    copies = final.all("COPY")
    assert copies == [f"--from=builder {IMAGE_VENV} {IMAGE_VENV}"], copies
    assert "pip" not in " ".join(final.all("RUN")), "no installs in the runtime stage"


def test_runtime_contract(final: Stage) -> None:
    env = final.env()
    assert env["IAN_DATA_DIR"] == "/data"
    assert env["IAN_LOG_FORMAT"] == "json"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert final.one("USER") in ("1000", "1000:1000")
    assert exec_form(final.one("VOLUME")) == ["/data"]
    assert final.one("EXPOSE").split() == ["8000", "9000", "9001"]
    assert exec_form(final.one("ENTRYPOINT")) == ["ian"]
    assert exec_form(final.one("CMD")) == ["node", "run"]
    run = " ".join(final.all("RUN"))
    assert "--uid 1000" in run and "chown 1000:1000 /data" in run
    hc = healthcheck_command(final)
    assert hc[:2] == ["python", "-c"] and "/health" in hc[2]
    assert "curl" not in final.one("HEALTHCHECK")


def test_every_ian_env_is_a_setting(final: Stage, ian_env_names) -> None:
    assert ian_env_names(list(final.env())) == []


def test_dockerignore_sends_only_what_the_build_needs(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "**", "start from 'ignore everything' and re-include"
    included = {p[1:] for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "requirements.lock", "README.md", "src"}
    # Whatever the builder COPYs from the context must be re-included.
    for args in stages[0].all("COPY"):
        *sources, _dest = args.split()
        for src in sources:
            assert src in included, f"COPY {src} is excluded by .dockerignore"
    # Local node state (private keys) and the venv never reach the context.
    for secret in (".ian-data", ".venv", ".git"):
        assert not any(p.lstrip("!").startswith(secret) for p in patterns if p.startswith("!"))


# --------------------------------------------------------------------------- the entry command


@dataclass
class ImageVenv:
    root: Path
    wheel: Path
    build_seconds: float

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    """What the builder stage makes: the wheel, installed with the lock into a fresh venv."""
    work = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    wheel_dir = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (wheel,) = wheel_dir.glob("ian_node-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--constraint",
            str(ROOT / "requirements.lock"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, f"install failed:\n{install.stdout}\n{install.stderr}"
    took = time.monotonic() - started
    print(f"\nwheel + locked venv built in {took:.1f} s")
    return ImageVenv(root=venv, wheel=wheel, build_seconds=took)


def image_env(final: Stage, venv: ImageVenv, extra: dict[str, str]) -> dict[str, str]:
    """The image's ENV with /opt/venv mapped to the test venv, over a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IAN_", "PYTHON", "VIRTUAL_"))}
    for key, value in final.env().items():
        value = value.replace("$PATH", env.get("PATH", "/usr/bin:/bin"))
        env[key] = value.replace(IMAGE_VENV, str(venv.root))
    env.update(extra)
    return env


def resolve(argv: list[str], env: dict[str, str]) -> list[str]:
    """argv[0] looked up on the image's PATH, as the container runtime does."""
    for directory in env["PATH"].split(os.pathsep):
        candidate = Path(directory) / argv[0]
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate), *argv[1:]]
    raise AssertionError(f"{argv[0]} is not on the image PATH {env['PATH']}")


class Running:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._out.closed:
            self._out.close()


@pytest.fixture
def processes() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for p in started:
        p.kill()


def run_healthcheck(final: Stage, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        resolve(healthcheck_command(final), env),
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def wait_healthy(final: Stage, env: dict[str, str], node: Running, timeout: float = 30) -> float:
    """Run the image's HEALTHCHECK until it passes; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if node.proc.poll() is not None:
            pytest.fail(f"node exited ({node.proc.returncode}) first:\n{node.output()}")
        if run_healthcheck(final, env).returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"HEALTHCHECK never passed within {timeout}s:\n{node.output()}")
        time.sleep(0.2)


def start_image_command(
    final: Stage, venv: ImageVenv, data_dir: Path, log: Path, processes: list[Running]
) -> tuple[Running, dict[str, str]]:
    env = image_env(
        final,
        venv,
        {
            "IAN_DATA_DIR": str(data_dir),
            "IAN_API_HOST": "127.0.0.1",
            "IAN_API_PORT": str(_free_port()),
            "IAN_P2P_HOST": "127.0.0.1",
            "IAN_P2P_PORT": "0",
            "IAN_WS_PORT": "0",
        },
    )
    argv = resolve(exec_form(final.one("ENTRYPOINT")) + exec_form(final.one("CMD")), env)
    node = Running(argv, env, log)
    processes.append(node)
    return node, env


@pytest.mark.integration
def test_image_command_serves_health_and_stops_on_sigterm(
    final: Stage, image_venv: ImageVenv, tmp_path: Path, processes: list[Running]
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)  # the image's /data: empty, owned by the node's user
    node, env = start_image_command(final, image_venv, data, tmp_path / "node.log", processes)
    took = wait_healthy(final, env, node)
    print(f"healthy {took:.1f} s after start")
    with socket.create_connection(("127.0.0.1", int(env["IAN_API_PORT"])), timeout=3):
        pass
    assert node.stop() == 0, node.output()
    # IAN_LOG_FORMAT=json from the image: one JSON object per line.
    lines = [line for line in node.output().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines), lines[:3]
    state = json.loads((data / "node_state.json").read_text())
    assert state["clean_shutdown"] is True
    # Once the node is gone the same probe reports unhealthy.
    assert run_healthcheck(final, env).returncode == 1


@pytest.mark.integration
def test_image_command_restarts_on_a_group_owned_volume(
    final: Stage, image_venv: ImageVenv, tmp_path: Path, processes: list[Running]
) -> None:
    """Kubernetes fsGroup volumes: the root is setgid and group-writable (2770) on first mount.

    The node must create its files there and start again on the same volume (with
    fsGroupChangePolicy OnRootMismatch the kubelet leaves the node's file modes alone).
    """
    data = tmp_path / "volume"
    data.mkdir()
    data.chmod(0o2770)
    for attempt in (1, 2):
        node, env = start_image_command(
            final, image_venv, data, tmp_path / f"node{attempt}.log", processes
        )
        wait_healthy(final, env, node)
        assert node.stop() == 0, node.output()
    assert (data / "identity.json").stat().st_mode & 0o777 == 0o600
    assert (data / "certs").stat().st_mode & 0o7777 == 0o700


@pytest.mark.integration
def test_compose_tau_node_command_answers(
    image_venv: ImageVenv, tmp_path: Path, processes: list[Running]
) -> None:
    """deploy/compose.yaml's tau-node runs `ian tau serve-mock` from the image; its
    healthcheck connects to the port, and a sendtx line gets SUCCESS."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    tau = compose["services"]["tau-node"]
    port = _free_port()
    command = [
        "127.0.0.1" if arg == "0.0.0.0" else str(port) if arg == "12345" else arg
        for arg in tau["command"]
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    mock = Running([str(image_venv.bin / "ian"), *command], env, tmp_path / "tau.log")
    processes.append(mock)
    probe = [
        str(image_venv.bin / "python") if arg == "python" else arg.replace("12345", str(port))
        for arg in tau["healthcheck"]["test"][1:]
    ]
    deadline = time.monotonic() + 20
    while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        assert mock.proc.poll() is None, mock.output()
        assert time.monotonic() < deadline, f"tau healthcheck never passed:\n{mock.output()}"
        time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b'sendtx {"type":"IAN_LOG_COMMIT","goal_id":"G","log_size":1}\r\n')
        reply = s.makefile("rb").readline()
    assert reply.startswith(b"SUCCESS "), reply
