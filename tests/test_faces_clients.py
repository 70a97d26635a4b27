"""Real clients through a real foreman process in front of the stand-in's faces.

The official ``openai`` and ``anthropic`` SDKs get the answers the stand-in gives them
directly; Claude Code and Codex (npm packages, installed into ``build/npm`` by
``.ci/run`` or on first use here) print the stand-in's answer; with the Ollama server
gone and fallback on, Claude Code is answered by the Claude stand-in.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import openai
import pytest

from foreman.standins.anthropic import DEFAULT_REPLY

from .processes import foreman, standin, until

TOKEN = "tok-faces-clients-1"
CLAUDE_KEY = "sk-ant-faces-clients-1"
NPM_DIR = Path(__file__).resolve().parent.parent / "build" / "npm"
PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(stand-in URL, foreman URL): one of each for the module."""
    data = tmp_path_factory.mktemp("faces-clients")
    with (
        standin("--token-rate", "500") as target,
        foreman(target, data, FOREMAN_TOKEN=TOKEN) as (
            url,
            _,
        ),
    ):
        yield target, url


#: The SDK clients a test made, closed after it (their pools would leak sockets to the
#: garbage collector, whose ResourceWarning fails whichever test it lands in).
OPENED: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def openai_pair(served: tuple[str, str]) -> tuple[openai.OpenAI, openai.OpenAI]:
    target, url = served
    through = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
    direct = openai.OpenAI(base_url=target + "/v1", api_key="unused", max_retries=0)
    OPENED.extend((through, direct))
    return through, direct


def anthropic_pair(served: tuple[str, str]) -> tuple[anthropic.Anthropic, anthropic.Anthropic]:
    target, url = served
    through = anthropic.Anthropic(base_url=url, api_key=TOKEN, max_retries=0)
    direct = anthropic.Anthropic(base_url=target, api_key="unused", max_retries=0)
    OPENED.extend((through, direct))
    return through, direct


def test_openai_sdk_gets_the_stand_ins_answers(served: tuple[str, str]) -> None:
    through, direct = openai_pair(served)
    messages = [{"role": "user", "content": "hello there"}]
    answers = []
    for client in (through, direct):
        chat = client.chat.completions.create(model="llama3.2", messages=messages)
        stream = client.chat.completions.create(model="qwen3:8b", messages=messages, stream=True)
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
        embedded = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        models = sorted(model.id for model in client.models.list())
        completion = client.completions.create(model="llama3.2", prompt="say hi")
        response = client.responses.create(model="llama3.2", input="hello there")
        answers.append(
            (
                chat.choices[0].message.content,
                chat.usage.total_tokens if chat.usage else None,
                streamed,
                [e.embedding for e in embedded.data],
                models,
                completion.choices[0].text,
                response.output_text,
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][0] == "hello there hello there hello there"


def test_openai_sdk_streams_responses(served: tuple[str, str]) -> None:
    through, direct = openai_pair(served)
    texts = []
    for client in (through, direct):
        with client.responses.stream(model="llama3.2", input="hello there") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        texts.append(("".join(deltas), final.output_text))
    assert texts[0] == texts[1] == (("hello there hello there hello there",) * 2)


def test_anthropic_sdk_gets_the_stand_ins_answers(served: tuple[str, str]) -> None:
    through, direct = anthropic_pair(served)
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    answers = []
    for client in (through, direct):
        created = client.messages.create(
            model="llama3.2",
            max_tokens=64,
            system="You answer briefly.",
            messages=[{"role": "user", "content": "hello there"}],
        )
        with client.messages.stream(
            model="qwen3:8b", max_tokens=64, messages=[{"role": "user", "content": "good day"}]
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        tooled = client.messages.create(
            model="llama3.2",
            max_tokens=64,
            tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather in Paris"}],
        )
        answers.append(
            (
                [block.type for block in created.content],
                created.content[0].text,  # type: ignore[union-attr]
                created.stop_reason,
                streamed,
                [block.type for block in final.content],
                tooled.content[0].text,  # type: ignore[union-attr]
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][1] == "hello there hello there hello there"


def test_sdk_errors_come_in_the_faces_shape(served: tuple[str, str]) -> None:
    through, _ = openai_pair(served)
    with pytest.raises(openai.NotFoundError) as missing:
        through.chat.completions.create(
            model="nope:1b", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["message"] == "model 'nope:1b' not found"  # type: ignore[index]
    claude, _ = anthropic_pair(served)
    with pytest.raises(anthropic.AuthenticationError):
        claude.with_options(api_key="wrong").messages.create(
            model="llama3.2", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )


# --- Claude Code and Codex --------------------------------------------------------------


def cli(name: str) -> Path:
    """The ``claude`` or ``codex`` command, installed into ``build/npm`` if need be (one
    install at a time: the tests run in several processes)."""
    command = NPM_DIR / "node_modules" / ".bin" / name
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    with open(NPM_DIR / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if command.exists():
            return command
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip(
                f"npm and node are missing: cannot install {PACKAGES[name]} (apt-get nodejs npm)"
            )
        installed = subprocess.run(
            [npm, "install", "--prefix", str(NPM_DIR), PACKAGES[name]],
            capture_output=True,
            timeout=600,
            check=False,
        )
    if installed.returncode != 0 or not command.exists():
        pytest.skip(f"npm could not install {PACKAGES[name]}: {installed.stderr[-500:]!r}")
    return command


def quiet_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "NO_COLOR": "1",
    }


def replies(target: str) -> list[str]:
    return httpx.get(target + "/_standin/stats").json()["replies"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout.decode()


@pytest.mark.parametrize("key_variable", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
def test_claude_code_runs_on_the_stand_in_through_foreman(
    served: tuple[str, str], tmp_path: Path, key_variable: str
) -> None:
    claude = cli("claude")
    target, url = served
    env = {**quiet_env(tmp_path), "ANTHROPIC_BASE_URL": url, key_variable: TOKEN}
    printed = run([str(claude), "-p", "hello there", "--model", "llama3.2"], env, tmp_path)
    assert printed.strip() and printed.strip() in [r.strip() for r in replies(target)]


def test_codex_runs_on_the_stand_in_through_foreman(
    served: tuple[str, str], tmp_path: Path
) -> None:
    codex = cli("codex")
    _, url = served
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "llama3.2"\nmodel_provider = "foreman"\n\n[model_providers.foreman]\n'
        f'name = "foreman"\nbase_url = "{url}/v1"\nenv_key = "FOREMAN_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {**quiet_env(tmp_path), "CODEX_HOME": str(home), "FOREMAN_KEY": TOKEN}
    printed = run([str(codex), "exec", "--skip-git-repo-check", "hello there"], env, tmp_path)
    assert "hello there hello there hello there" in printed


def test_claude_code_falls_back_to_claude_while_ollama_is_down(tmp_path: Path) -> None:
    claude = cli("claude")
    with (
        standin("--api", "anthropic", "--api-key", CLAUDE_KEY) as claude_api,
        standin() as target,
        foreman(target, tmp_path / "data", FOREMAN_TOKEN=TOKEN) as (url, _),
    ):
        headers = {"authorization": f"Bearer {TOKEN}"}
        backend = {"name": "claude", "type": "anthropic", "endpoint": claude_api}
        added = httpx.post(  # the first Claude backend imports the SDK: seconds on a busy box
            url + "/admin/api/backends",
            json={**backend, "api_key": CLAUDE_KEY},
            headers=headers,
            timeout=60,
        )
        assert added.status_code == 201, added.text

        def connected() -> bool:
            listed = httpx.get(url + "/admin/api/backends", headers=headers).json()["backends"]
            return any(
                b["name"] == "claude" and b["status"]["state"] == "connected" for b in listed
            )

        until(connected, what="the Claude backend")
        stop_standin(target)
        env = {**quiet_env(tmp_path), "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": TOKEN}
        printed = run([str(claude), "-p", "hello there", "--model", "llama3.2"], env, tmp_path)
        assert printed.strip() == DEFAULT_REPLY


def stop_standin(url: str) -> None:
    """Kill the stand-in process listening at ``url`` (found by its port; a SIGTERM
    would let it serve foreman's open keep-alive connections for its grace period)."""
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(
        ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    if "pid=" not in found.stdout:
        pytest.skip(f"cannot find the stand-in's process: {found.stdout!r} {found.stderr!r}")
    pid = int(found.stdout.split("pid=")[1].split(",")[0])
    assert b"standin" in Path(f"/proc/{pid}/cmdline").read_bytes()  # ours, nobody else's
    os.kill(pid, signal.SIGKILL)
    until(lambda: not _answers(url), what="the stand-in to stop")


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/api/version", timeout=1.0)
    except httpx.HTTPError:
        return False
    return True
