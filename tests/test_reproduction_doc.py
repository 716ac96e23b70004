"""docs/reproduction.md names only commands and flags that exist: each command's --help runs
and lists every flag the doc uses."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from convscope.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduction.md"


def _commands() -> list[str]:
    """Each `convscope ...` command of the doc's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command.startswith("convscope "):
                commands.append(command)
    return commands


def test_the_doc_names_commands() -> None:
    assert len(_commands()) >= 12


@pytest.mark.parametrize("command", _commands())
def test_each_command_and_its_flags_exist(command: str) -> None:
    words = command.split()
    sub = words[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([sub, "--help"])  # the CLI's own parser, as `convscope SUB --help` runs it
    assert exit_.value.code == 0
    flags = [word.split("=", 1)[0] for word in words[2:] if word.startswith("--")]
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out.getvalue())]
    assert not missing, f"`convscope {sub}` has no {missing}"
