"""The ``foreman`` command: ``serve``, ``demo``, ``standin``, ``jobs``, ``users`` and ``store``.

Every ``serve`` flag is also an environment variable (see :data:`foreman.settings.OPTIONS`);
a flag wins over its variable. An invalid value exits with status 2 and one line
naming the variable.
"""

from __future__ import annotations

import logging
import re
import signal
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import click
import trio

from . import __version__
from .backends.cli import secrets
from .jobs.cli import jobs
from .logs import configure_logging
from .settings import OPTIONS, ConfigError, Settings
from .store.copy import store
from .users.cli import users

__all__ = ["main"]

LOGGER = logging.getLogger("foreman")

DEMO_PROMPT = """\
foreman demo: foreman is listening at {url}, in front of the stand-in Ollama target at {target}
Try, in another terminal:
  curl -N {url}/api/chat{auth} \\
    -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"why is the sky blue?"}}]}}'
  curl {url}/api/tags{auth}
  curl {url}/v1/chat/completions{auth} \\
    -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"hello"}}]}}'
  curl {url}/healthz
Settings pages, in a browser: {url}/admin/
Stop with Ctrl-C."""

#: The settings ``demo`` takes (its target is the stand-in, so not ``--ollama-url`` & co).
DEMO_SETTINGS = frozenset(
    {"listen", "token", "embed_model", "max_queue", "grace", "log_level", "log_format", "data_dir"}
)


def _settings_options(
    command: Callable[..., Any], only: frozenset[str] | None = None
) -> Callable[..., Any]:
    for option in reversed(OPTIONS):
        if only is not None and option.field not in only:
            continue
        command = click.option(
            option.flag,
            option.field,
            envvar=option.env,
            show_envvar=True,
            default=option.default,
            show_default=option.default is not None and not option.secret,
            metavar=option.metavar,
            help=option.help,
        )(command)
    return command


def _load(values: dict[str, str | None]) -> Settings:
    try:
        settings = Settings.from_strings(values)
    except ConfigError as exc:
        click.echo(f"foreman: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="foreman")
def main() -> None:
    """foreman: a transparent gateway in front of one Ollama server.

    Ollama clients point at foreman and see native Ollama; chats are
    serialised through one fair gate, embeddings run in parallel, the
    embedder is kept warm, and an outage of the target degrades foreman
    instead of breaking it.
    """


@main.command()
@_settings_options
def serve(**values: str | None) -> None:
    """Serve the Ollama API in front of FOREMAN_OLLAMA_URL until SIGINT/SIGTERM."""
    from .service import serve_until_signalled

    settings = _load(values)
    _exit_with(settings, serve_until_signalled, settings)


def _exit_with(settings: Settings, async_fn: Callable[..., Any], *args: Any) -> None:
    """Run ``async_fn(*args)`` under trio and exit with the status it returns.

    A listen address that cannot be bound (in use, not this machine's) exits 1 with one
    line; so does a system error that stops foreman (its data directory or database
    unusable, a TLS file unreadable): supervisors restart it, people read one line.
    """
    from .backends.sealing import SecretKeyError
    from .service import CannotListen
    from .store import StoreError

    try:
        status = trio.run(async_fn, *args)
    except* CannotListen as group:
        click.echo(f"foreman: cannot listen on {settings.listen}: {_leaf(group)}", err=True)
        sys.exit(1)
    except* (StoreError, SecretKeyError) as group:
        click.echo(f"foreman: {_leaf(group)}", err=True)
        sys.exit(1)
    except* (OSError, sqlite3.Error) as group:
        click.echo(f"foreman: stopped: {_leaf(group)}", err=True)
        sys.exit(1)
    sys.exit(status)


#: The stand-in models ``foreman demo`` shows by default: names and sizes as ``ollama list``
#: shows them on a real machine.
DEMO_MODELS = "llama3.2=2.0GB,qwen3:8b=5.2GB,qwen2.5-coder:32b=19.9GB,nomic-embed-text=274MB"

_MODEL = re.compile(r"\s*([^=,\s]+)\s*(?:=\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_models(text: str) -> tuple[Any, ...]:
    """The stand-in's models from ``NAME[=SIZE],...`` (``qwen2.5-coder:32b=19.9GB``,
    ``nomic-embed-text=274MB``; sizes in bytes or with a decimal or binary unit).

    A name of the stand-in's own models keeps its details (capabilities, family); another
    name is a chat model, or an embedding model when its name has ``embed`` in it.

    Raises:
        click.BadParameter: an entry that is no ``NAME[=SIZE]``, or a name Ollama refuses.
    """
    from .standins.ollama import DEFAULT_MODELS, ModelSpec

    known = {spec.name.removesuffix(":latest"): spec for spec in DEFAULT_MODELS}
    specs = []
    for entry in text.split(","):
        found = _MODEL.fullmatch(entry)
        if not entry.strip() or found is None:
            raise click.BadParameter(f"{entry.strip()!r}: write NAME or NAME=SIZE (19.9GB)")
        name, number, unit = found.groups()
        name = name if ":" in name else f"{name}:latest"
        spec = known.get(name.removesuffix(":latest"))
        if spec is None:
            make = ModelSpec.embedding if "embed" in name else ModelSpec.completion
            spec = make(name)
        if number is not None:
            try:
                spec = spec.replace(size=int(float(number) * _UNITS[(unit or "").lower()]))
            except ValueError:
                raise click.BadParameter(f"{entry.strip()!r}: {number!r} is no size") from None
        try:
            spec.parsed  # noqa: B018  (raises for a name Ollama refuses)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        specs.append(spec)
    return tuple(specs)


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


@main.command()
@click.option(
    "--standin-listen",
    default="127.0.0.1:0",
    show_default=True,
    help="HOST:PORT for the stand-in target (port 0: any free port).",
)
@click.option(
    "--token-rate",
    default=8.0,
    show_default=True,
    type=float,
    help="Tokens per second the stand-in streams.",
)
@click.option(
    "--models",
    default=DEMO_MODELS,
    show_default=True,
    help="The stand-in's models, NAME=SIZE separated by commas.",
)
@partial(_settings_options, only=DEMO_SETTINGS)
def demo(standin_listen: str, token_rate: float, models: str, **values: str | None) -> None:
    """Serve foreman in front of the built-in stand-in target, to try it without Ollama.

    The hints to try it are printed once foreman listens.
    """
    from .service import CannotListen, check_listen

    settings = _load(values)
    if settings.embed_model is None:
        settings = settings.replace(embed_model="nomic-embed-text")
    specs = parse_models(models)
    try:
        check_listen(standin_listen)
    except CannotListen as exc:
        click.echo(
            f"foreman: the stand-in target cannot listen on {standin_listen}: {exc}"
            " (choose another address with --standin-listen, or port 0 for any free one)",
            err=True,
        )
        sys.exit(1)
    _exit_with(settings, _demo, settings, standin_listen, token_rate, specs)


async def _demo(
    settings: Settings, standin_listen: str, token_rate: float, models: tuple[Any, ...]
) -> int:
    from .service import check_listen, serve_until_signalled
    from .standins.ollama import StandIn
    from .standins.ollama import serve as serve_standin

    check_listen(settings.listen)  # before the stand-in starts and says so
    standin = StandIn(models=models, token_rate=token_rate, load_delay=0.5)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(partial(serve_standin, standin, standin_listen))
        settings = settings.replace(ollama_url=urls[0])
        auth = f' -H "Authorization: Bearer {settings.token}"' if settings.token else ""

        def ready(foreman_urls: list[str]) -> None:
            hints = DEMO_PROMPT.format(url=foreman_urls[0], target=urls[0], auth=auth)
            click.echo(hints, err=True)

        status: int = await serve_until_signalled(settings, on_ready=ready)
        nursery.cancel_scope.cancel()
    return status


@main.command()
@click.option(
    "--listen", default="127.0.0.1:11434", show_default=True, help="HOST:PORT to serve on."
)
@click.option(
    "--token-rate",
    default=20.0,
    show_default=True,
    type=float,
    help="Tokens (NDJSON lines) per second.",
)
@click.option(
    "--max-loaded-models",
    default=2,
    show_default=True,
    type=int,
    help="OLLAMA_MAX_LOADED_MODELS: runners resident at once.",
)
@click.option(
    "--load-delay",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds to load a model that is not resident.",
)
@click.option(
    "--reply-tokens",
    default=6,
    show_default=True,
    type=int,
    help="Tokens in each reply (a request's options.num_predict may shorten it).",
)
@click.option(
    "--token",
    default=None,
    envvar="STANDIN_TOKEN",
    help="Require this bearer token, as a target behind an auth proxy would.",
)
@click.option(
    "--api",
    default="ollama",
    show_default=True,
    type=click.Choice(["ollama", "anthropic", "openai"]),
    help="Which API to stand in for: Ollama, Anthropic's Messages API or an OpenAI-compatible"
    " server (these two take only --listen, --api-key and --log-level).",
)
@click.option(
    "--api-key",
    default="sk-test",
    show_default=True,
    help="The one API key the Anthropic or OpenAI stand-in accepts.",
)
@click.option(
    "--models",
    default=None,
    help="The Ollama stand-in's models, NAME=SIZE separated by commas"
    " (qwen2.5-coder:32b=19.9GB,nomic-embed-text=274MB); default: llama3.2, qwen3:8b and"
    " nomic-embed-text.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def standin(
    listen: str,
    token_rate: float,
    max_loaded_models: int,
    load_delay: float,
    reply_tokens: int,
    token: str | None,
    api: str,
    api_key: str,
    models: str | None,
    log_level: str,
) -> None:
    """Run a stand-in target (for tests and demos) until SIGINT/SIGTERM."""
    specs = parse_models(models) if models else None
    configure_logging(log_level.upper())
    target: Any
    if api == "anthropic":
        from .standins.anthropic import AnthropicStandIn
        from .standins.anthropic import serve as serve_standin

        target = AnthropicStandIn(api_key=api_key)
    elif api == "openai":
        from .standins.openai import OpenAIStandIn
        from .standins.openai import serve as serve_standin  # type: ignore[assignment]

        target = OpenAIStandIn(api_key=api_key)
    else:
        from .standins.ollama import StandIn
        from .standins.ollama import serve as serve_standin  # type: ignore[assignment]

        target = StandIn(
            **({"models": specs} if specs else {}),
            token_rate=token_rate,
            max_loaded_models=max_loaded_models,
            load_delay=load_delay,
            reply_tokens=reply_tokens,
            token=token,
        )

    async def until_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(serve_standin, target, listen, shutdown_trigger=until_signal)
            )
            LOGGER.info("stand-in %s API serving on %s", api, ", ".join(urls))

    trio.run(run)


main.add_command(jobs)
main.add_command(users)
main.add_command(secrets)
main.add_command(store)
