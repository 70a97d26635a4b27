"""The README as a newcomer pastes it: every shell block, top to bottom, in one shell.

The blocks run as one bash script (variables set by one block are there for the
next, as in a terminal), against the demo that the README's own first block starts,
on a free port (``:8080`` in the blocks becomes it; ``FOREMAN_LISTEN`` and
``FOREMAN_DATA_DIR`` are set as a reader's shell would have them). A block whose first
line is :data:`MARK` is left out: it needs what the tests do not have. The test fails
when a command fails, or when any ``curl`` gets an HTTP error or no answer (a ``curl``
with ``-f`` tests for itself, as in the waiting loops).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The first line of a block that the tests do not run (visible to readers too).
MARK = "# not run by the tests:"
SHELLS = frozenset({"sh", "bash", "shell"})
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: Wraps ``curl`` so that each answer's status goes to stderr (``-w %{stderr}``).
PRELUDE = r"""
set -eo pipefail
curl() {
    local arg
    for arg in "$@"; do
        case "$arg" in --fail|-f|-[a-zA-Z]*f*) command curl "$@"; return;; esac
    done
    command curl -w '%{stderr}\nREADME-CURL %{http_code} %{url_effective}\n' "$@"
}
"""


def shell_blocks(text: str) -> list[str]:
    """The README's shell blocks that the tests run, in order."""
    blocks = []
    for language, body in _FENCE.findall(text):
        if language in SHELLS and not body.lstrip().startswith(MARK):
            blocks.append(body)
    return blocks


def test_blocks_are_found_and_marked_ones_left_out() -> None:
    text = (
        "```sh\necho one\n```\n\n```sh\n# not run by the tests: needs x\nx\n```\n"
        "```python\np\n```\n"
    )
    assert shell_blocks(text) == ["echo one\n"]
    blocks = shell_blocks(README.read_text())
    assert len(blocks) >= 5 and any("foreman demo &" in b for b in blocks)
    skipped = README.read_text().count(MARK)
    assert skipped <= 7, "keep the list of blocks the tests cannot run short"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="the README's blocks are POSIX shell")
def test_the_readme_works_as_pasted() -> None:
    port = _free_port()
    blocks = shell_blocks(README.read_text())
    script = PRELUDE + "\n".join(
        f"echo '--- README block {n}' >&2\n{b}" for n, b in enumerate(blocks, 1)
    )
    script = script.replace(":8080", f":{port}")
    with tempfile.TemporaryDirectory(prefix="foreman-readme-") as data:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FOREMAN_LISTEN": f"127.0.0.1:{port}",
            "FOREMAN_DATA_DIR": data,
        }
        for name in ("FOREMAN_URL", "FOREMAN_TOKEN", "FOREMAN_OLLAMA_URL", "KEY", "ADMIN_KEY"):
            env.pop(name, None)
        out_file = open(os.path.join(data, "stdout"), "w+")  # noqa: SIM115
        err_file = open(os.path.join(data, "stderr"), "w+")  # noqa: SIM115
        with out_file, err_file:
            # files, not pipes: the demo that block 1 leaves running keeps them open
            shell = subprocess.Popen(
                ["bash", "-c", script],
                cwd=ROOT,
                env=env,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,  # the demo it starts is in its process group
            )
            try:
                shell.wait(timeout=120)
            finally:
                try:
                    os.killpg(shell.pid, signal.SIGTERM)  # the demo, left running by block 1
                except ProcessLookupError:
                    pass
                shell.wait()
            out_file.seek(0)
            err_file.seek(0)
            out, err = out_file.read(), err_file.read()
    report = f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert shell.returncode == 0, report
    answers = re.findall(r"^README-CURL (\d{3}) (\S+)$", err, re.MULTILINE)
    assert answers, report
    failed = [(code, url) for code, url in answers if not 200 <= int(code) < 400]
    assert not failed, f"curl answered {failed}\n{report}"
    assert '"done":true' in out  # the demo's chat streamed to its end


def test_the_readme_names_every_everyday_recipe() -> None:
    recipes = re.findall(r"^([a-z][a-z-]*)(?: \*?\w+)*:", (ROOT / "justfile").read_text(), re.M)
    text = README.read_text()
    missing = [r for r in recipes if r != "default" and f"`just {r}`" not in text]
    assert recipes and not missing, f"README's recipe list misses {missing}"


def test_the_deploy_readme_says_the_containerfile_needs_buildkit() -> None:
    uses_mount = "RUN --mount" in (ROOT / "Containerfile").read_text()
    assert not uses_mount or "BuildKit" in (ROOT / "deploy/README.md").read_text()
