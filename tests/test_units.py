"""Small pure pieces: model names, settings, error classification, the gate."""

from __future__ import annotations

import httpx2 as httpx
import pytest
import trio
import trio.testing

from foreman.dataplane.errors import (
    GateFull,
    TargetBroken,
    TargetTimeout,
    TargetUnreachable,
    classify,
)
from foreman.dataplane.gate import Gate
from foreman.dataplane.jsonwire import dumps
from foreman.dataplane.names import is_cloud, normalize
from foreman.settings import ConfigError, Settings


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("llama3", "registry.ollama.ai/library/llama3:latest"),
        ("Llama3:LATEST", "registry.ollama.ai/library/llama3:latest"),
        ("library/llama3", "registry.ollama.ai/library/llama3:latest"),
        ("jmorgan/x:7b", "registry.ollama.ai/jmorgan/x:7b"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m"),
        ("localhost:5000/ns/m:1", "localhost:5000/ns/m:1"),
        ("llama3:local", "registry.ollama.ai/library/llama3:latest"),
        ("a:b:c", None),
        ("foo bar", None),
        ("", None),
        ("a/b/c/d", None),
    ],
)
def test_normalize(name: str, normal: str | None) -> None:
    assert normalize(name) == normal


def test_llama3_is_not_llama3_8b() -> None:
    assert normalize("llama3") != normalize("llama3:8b")


def test_is_cloud() -> None:
    assert is_cloud("gpt-oss:120b-cloud") and is_cloud("qwen3:cloud")
    assert not is_cloud("llama3") and not is_cloud("cloud:latest")


def test_settings_defaults_and_parsing() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "FOREMAN_POLL_INTERVAL": "2.5",
            "FOREMAN_MAX_QUEUE": "0",
            "FOREMAN_OLLAMA_URL": "http://gpu.lan:11434/",
            "FOREMAN_TOKEN": "",
        }
    )
    assert (s.poll_interval, s.max_queue, s.ollama_url, s.token) == (
        2.5,
        0,
        "http://gpu.lan:11434",
        None,
    )


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("FOREMAN_POLL_INTERVAL", "0"),
        ("FOREMAN_POLL_INTERVAL", "nan"),
        ("FOREMAN_LISTEN", "host"),
        ("FOREMAN_LISTEN", "h:99999"),
        ("FOREMAN_MAX_QUEUE", "1.5"),
        ("FOREMAN_TOKEN", "a b"),
    ],
)
def test_settings_errors_name_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        Settings.from_env({env: value})


def test_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FOREMAN_TOKEN": "top secret"})
    assert "top secret" not in str(info.value)


def test_classify_by_exception_type() -> None:
    request = httpx.Request("GET", "http://t")
    assert isinstance(classify(httpx.ConnectError("x", request=request), "t"), TargetUnreachable)
    assert isinstance(classify(httpx.ConnectTimeout("x", request=request), "t"), TargetUnreachable)
    assert isinstance(classify(httpx.ReadTimeout("x", request=request), "t"), TargetTimeout)
    assert isinstance(classify(httpx.PoolTimeout("x", request=request), "t"), TargetTimeout)
    assert isinstance(classify(httpx.RemoteProtocolError("x", request=request), "t"), TargetBroken)
    assert isinstance(classify(httpx.ReadError("x", request=request), "t"), TargetBroken)


def test_json_is_written_as_go_writes_it() -> None:
    assert dumps({"error": "a<b>&c é"}) == '{"error":"a\\u003cb\\u003e\\u0026c é"}'.encode()


async def test_gate_is_fifo_and_bounded(autojump_clock: trio.abc.Clock) -> None:
    gate = Gate(max_waiting=2)
    order: list[int] = []

    async def hold(i: int) -> None:
        async with gate.hold() as waited:
            order.append(i)
            assert waited == pytest.approx(i * 1.0)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(hold, i)
            await trio.testing.wait_all_tasks_blocked()
        assert gate.statistics().waiting == 2
        with pytest.raises(GateFull):
            async with gate.hold():
                pass
    assert order == [0, 1, 2]
    assert gate.statistics().in_flight == 0


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    from foreman.settings import OPTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for option in OPTIONS:
        assert f"`{option.env}` | `{option.flag}` |" in readme, option.env


def test_the_control_app_is_given_its_root_path() -> None:
    # Quart otherwise looks for the package from the working directory, and fails when
    # `python -m foreman` runs beside a directory named foreman (a clone of this repository).
    from pathlib import Path

    import foreman
    from foreman.control.routes import create_control_app

    app = create_control_app(None)  # type: ignore[arg-type]
    assert Path(app.root_path) == Path(foreman.__file__).parent / "control"
