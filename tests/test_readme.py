"""Every command in the READMEs' ``bash`` blocks runs as written on a fresh clone: the repository files it names
exist, and the project's own commands (``python -m training|indexing|retrieval_app ...``) accept its arguments
(each module's argument parser is run on them; nothing is trained or built here)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = [REPO / "README.md", REPO / "retrieval_app" / "README.md"]
#: Top-level entries of the repository: a token starting with one of them names a repository file.
TRACKED_ROOTS = ("assets", "benchmarks", "docs", "indexing", "retrieval_app", "study", "tests", "training")
PROJECT_MODULES = ("training", "indexing", "retrieval_app")


def bash_commands(readme: Path) -> list[str]:
    """The commands of the ``bash`` code blocks of ``readme``, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


COMMANDS = [(readme.relative_to(REPO).as_posix(), command) for readme in READMES for command in bash_commands(readme)]


def test_the_readmes_have_commands():
    assert len(COMMANDS) > 15 and any("indexing search" in c for _, c in COMMANDS)


@pytest.mark.parametrize("readme,command", COMMANDS, ids=[f"{r}:{c[:60]}" for r, c in COMMANDS])
def test_every_readme_command_names_files_that_exist_and_parses(readme, command):
    parts: list[list[str]] = [[]]
    for word in shlex.split(command):
        if word in ("&&", "||", ";", "|"):
            parts.append([])
        elif not re.fullmatch(r"[A-Z_]+=\S*", word):  # drop VAR=value
            parts[-1].append(word)
    for words in parts:
        for word in words:
            path = word.split("=", 1)[-1]
            if path.split("/", 1)[0] in TRACKED_ROOTS and "/" in path and not path.endswith("/"):
                assert (REPO / path).exists(), f"{readme}: `{command}` names {path}, which does not exist"
        if "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] in PROJECT_MODULES:
            at = words.index("-m")
            module, argv = words[at + 1], words[at + 2:]
            parser = importlib.import_module(f"{module}.__main__")._parser()
            try:
                parser.parse_args(argv)
            except SystemExit as exit:
                pytest.fail(f"{readme}: `{command}`: python -m {module} rejects its arguments (exit {exit.code})")
