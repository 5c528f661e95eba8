"""Every fenced block of the README works as printed.

* ``python`` blocks run, as a pasted script, against a real two-site cluster in
  ``./hdsd-data`` (the directory the README's commands assume);
* ``sh`` blocks run with bash against the same cluster, in README order; every ``hdsd ...``
  command in every ``sh`` block, run or not, must also parse with the real click CLI
  (usage brackets such as ``[--json]`` are tried both left out and filled in);
* ``toml`` blocks must parse.

A block that cannot run here (it installs software, serves until stopped, needs another
cluster...) says so on the line before its fence: ``<!-- not-run: the reason -->``. Its
``hdsd`` commands are still parsed. Any other block that fails fails the test.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from hdsd.cli._main import main
from tests.helpers.cluster import NodeProcess, init_cluster

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LANGUAGES = ("sh", "python", "toml")
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, when marked

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\S*)\s*", lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: unclosed code block")
        marker = _NOT_RUN.fullmatch(lines[start - 1].strip()) if start else None
        blocks.append(Block(start + 1, fence.group(1), "\n".join(body) + "\n",
                            marker.group("reason") if marker else None))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_blocks_are_known_and_markers_are_used() -> None:
    assert len(BLOCKS) >= 8, BLOCKS
    for block in BLOCKS:
        assert block.lang in LANGUAGES, f"{block}: no runner for this language; mark it"
        assert block.not_run is None or block.not_run, f"{block}: not-run needs a reason"
    # A marker that precedes no fence (a block moved or deleted) would silently mean nothing.
    lines = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if _NOT_RUN.fullmatch(line.strip()):
            assert n + 1 < len(lines) and lines[n + 1].startswith("```"), \
                f"README.md:{n + 1}: a not-run marker must sit right before a fence"
    assert any(b.not_run is None and b.lang == "python" for b in BLOCKS)
    assert any(b.not_run is None and b.lang == "sh" for b in BLOCKS)


# -- parsing hdsd command lines ---------------------------------------------------------------
def _usage_variants(line: str) -> list[str]:
    """*line* with its usage brackets left out, and filled in (``[TENANT[/BUCKET]]``)."""
    if "[" not in line:
        return [line]
    without = line
    while (shorter := re.sub(r"\[[^\[\]]*\]", "", without)) != without:
        without = shorter
    return [without, line.replace("[", "").replace("]", "")]


def hdsd_commands(script: str) -> Iterator[list[str]]:
    """The argument lists of the ``hdsd`` commands in a shell script (pipelines and ``&&``
    lists split; comments dropped; the program may be a path ending in ``hdsd``)."""
    for raw in script.splitlines():
        for line in _usage_variants(raw):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token and set(token) <= set("|&;()<>"):
                    if command and Path(command[0]).name == "hdsd":
                        yield command[1:]
                    command = []
                else:
                    command.append(token)


def parse_cli(args: list[str]) -> click.Command:
    """Parse *args* as the real ``hdsd`` CLI would, down to the command, without running it
    (and without checking that paths exist: README paths are examples). Raises a click
    ``UsageError`` for an unknown command or option, a missing value or argument, an extra
    argument, or a value its type refuses (choices, ranges, numbers)."""
    command: click.Command = main
    ctx = click.Context(main, info_name="hdsd", **main.context_settings)
    rest = list(args)
    while True:
        values, rest, _ = command.make_parser(ctx).parse_args(args=rest)
        for param in command.params:
            value = values.get(param.name) if param.name else None
            # click marks a value it did not see with a sentinel (an enum member) since 8.2.
            if value is None or isinstance(value, enum.Enum) or value == ():
                if param.required:
                    raise click.MissingParameter(ctx=ctx, param=param)
                continue
            if not isinstance(param.type, click.Path):
                param.type_cast_value(ctx, value)
        if not isinstance(command, click.Group):
            if rest and not ctx.allow_extra_args:
                raise click.UsageError(f"unexpected extra arguments {rest}", ctx)
            return command
        if not rest:
            raise click.UsageError("missing command", ctx)
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no such command {rest[0]!r}", ctx)
        ctx = click.Context(sub, info_name=rest[0], parent=ctx, **sub.context_settings)
        command, rest = sub, rest[1:]


def test_the_command_parser_catches_mistakes() -> None:
    assert parse_cli(["--site", "dc2", "get", "a/b", "--range", "0-9", "-o", "x"]).name == "get"
    for wrong in (["gte", "a/b"], ["get", "a/b", "--ranges", "0-9"], ["get"],
                  ["get", "a/b", "c"], ["cert", "issue", "--client", "c", "--tenant", "t"],
                  ["cert", "issue", "--client", "c", "--tenant", "t", "--role", "boss"],
                  ["init", "d", "--nodes-per-site", "99"], ["tenant"]):
        with pytest.raises(click.UsageError):
            parse_cli(wrong)
    assert list(hdsd_commands("pg_dump db | hdsd put b/k -   # hdsd ignored\n"
                              "x && .venv/bin/hdsd ls b [--json]\n")) == [
        ["put", "b/k", "-"], ["ls", "b"], ["ls", "b", "--json"]]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "sh"], ids=str)
def test_every_hdsd_command_parses(block: Block) -> None:
    commands = list(hdsd_commands(block.text))
    for args in commands:
        try:
            parse_cli(args)
        except click.UsageError as exc:
            pytest.fail(f"{block}: hdsd {shlex.join(args)}: {exc.format_message()}")


# -- running the blocks -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding a running cluster as ``hdsd-data`` and the files the README's
    examples name (``ct-001.dcm``)."""
    work = tmp_path_factory.mktemp("readme")
    init_cluster(work / "hdsd-data")
    (work / "ct-001.dcm").write_bytes(os.urandom(3000))
    nodes = [NodeProcess(work / "hdsd-data" / n / "node.toml").start()
             for n in ("dc1-n1", "dc2-n1")]
    try:
        yield work
    finally:
        for node in nodes:
            node.kill()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HDSD_PROFILE"}  # the README's default
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.e2e
def test_every_unmarked_block_runs(workdir: Path) -> None:
    ran = 0
    for block in BLOCKS:
        if block.not_run is not None:
            continue
        if block.lang == "toml":
            tomllib.loads(block.text)
            continue
        if block.lang == "python":
            argv = [sys.executable, "-W", "error", "-"]
        else:
            argv = ["bash", "-euo", "pipefail", "-s"]
        proc = subprocess.run(argv, input=block.text.encode(), cwd=workdir, env=_env(),
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, (
            f"{block} exited {proc.returncode}:\n{block.text}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}")
        ran += 1
    assert ran >= 2
