"""The README's and docs/'s examples run as written, and their links stay inside the
repository.

Every shell block (```sh) of README.md and docs/*.md is either run here, or preceded
by a line `<!-- not run: why -->` (docker-compose commands, which tests/compose
covers, and the commands that run the suites or the benchmarks). The blocks that run
are run in order, the README first and then docs/ by file name, against one cluster
that the one `vsim up` line among them starts: it runs with a port and data dir of
this test's own added (and `-o json`, to read the password a person reads off its
table), `vsim login` gets that password as `VSIM_PASSWORD`, and `vsim down` runs after
every other block, since it ends the cluster they all share. Each line is one command
and must exit 0, except one ending in `# fails: FaultName`, which must exit 1 with
that fault. The Python block (the SDK example) runs against the session's vCenter.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from asyncio.subprocess import PIPE
from dataclasses import dataclass
from pathlib import Path

from vsim.cluster import processes

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VSIM = str(Path(sys.executable).parent / "vsim")
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!-- not run: (?P<why>\S.*?) -->$")
FAILS = re.compile(r"#\s*fails:\s*(?P<fault>\w+)")
FENCE = re.compile(r"^```(?P<language>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_run: str  # why, or "" for a block that runs

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line + 1 + offset}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the not-run marker before each."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1] if i else ""
        marker = NOT_RUN.match(before)
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(path, i + 1, fence["language"], text, marker["why"] if marker else ""))
        i = end + 1
    return found


def every_block() -> list[Block]:
    return [b for path in DOCUMENTS for b in blocks(path)]


def shell_blocks() -> list[Block]:
    return [b for b in every_block() if b.language in ("sh", "bash", "shell", "console")]


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]
    fault: str  # the fault it must fail with, or ""


def commands(block: Block) -> list[Command]:
    """A runnable block's lines as `vsim` commands (an empty line or a comment: none)."""
    found = []
    for offset, line in enumerate(block.text.splitlines()):
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        fails = FAILS.search(line)
        found.append(Command(block.where(offset), argv, fails["fault"] if fails else ""))
    return found


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_readme_opens_with_make_run_and_make_test():
    first = code_blocks("sh")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make run", "make test"]


def test_every_shell_example_runs_here_or_says_why_not():
    shell = shell_blocks()
    assert shell, "no shell examples found"
    for block in shell:
        if block.not_run:
            continue
        for command in commands(block):
            assert command.argv[0] == "vsim", (
                f"{command.where}: only `vsim` commands run here; mark the block "
                "`<!-- not run: why -->` if it cannot"
            )
    for path in DOCUMENTS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("<!-- not run"):
                assert NOT_RUN.match(line), f"{path.name}:{i + 1}: write `<!-- not run: why -->`"
                assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), (
                    f"{path.name}:{i + 1}: a not-run marker goes on the line before a block"
                )
    ups = [c for b in shell if not b.not_run for c in commands(b) if c.argv[1:2] == ["up"]]
    assert len(ups) == 1, "one `vsim up` starts the cluster every runnable example shares"


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.M)


def prose(text: str) -> str:
    """The text outside code: fenced blocks and inline code spans removed."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (inline code counts: `vsim up`
    -> vsim-up)."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return {
        re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in HEADING.findall(text)
    }


def test_links_stay_inside_the_repository_and_resolve():
    for path in DOCUMENTS:
        for match in LINK.finditer(prose(path.read_text())):
            target = match["target"]
            assert "://" not in target and not target.startswith("mailto:"), (
                f"{path.name}: {target} leads outside the repository"
            )
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            assert resolved.is_relative_to(REPO), f"{path.name}: {target} leaves the repository"
            assert resolved.exists(), f"{path.name}: {target} does not exist"
            if anchor:
                assert resolved.suffix == ".md", f"{path.name}: {target}: an anchor in a non-page"
                assert anchor in anchors(resolved), (
                    f"{path.name}: {target}: no such heading in {resolved.name}"
                )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell:
    """Runs a document's commands as a person would type them, in one config."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {**os.environ, "VSIM_CONFIG": str(tmp_path / "config")}
        self.pid: int | None = None

    def run(self, command: Command) -> subprocess.CompletedProcess:
        argv = command.argv[1:]
        if argv[:1] == ["up"]:
            data = str(self.tmp_path / "data")
            argv = [*argv, "--port", str(free_port()), "--data-dir", data, "-o", "json"]
        done = subprocess.run(
            [VSIM, *argv], env=self.env, capture_output=True, text=True, timeout=600,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        told = f"{command.where}: {shlex.join(command.argv)}\n{done.stdout}{done.stderr}"
        if command.fault:
            assert done.returncode == 1 and f"Error: {command.fault}:" in done.stderr, told
        else:
            assert done.returncode == 0, told
        if argv[:1] == ["up"]:
            info = json.loads(done.stdout)
            self.pid = info["pid"]
            self.env["VSIM_PASSWORD"] = info["password"]  # what a person reads off the table
        return done


def test_every_runnable_shell_example_runs(tmp_path: Path):
    runnable = [c for b in shell_blocks() if not b.not_run for c in commands(b)]
    first, *rest = runnable
    assert first.argv[:2] == ["vsim", "up"], f"{first.where}: the first command starts a cluster"
    downs = [c for c in rest if c.argv[1:2] == ["down"]]
    shell = Shell(tmp_path)
    shell.run(first)
    try:
        for command in rest:
            if command not in downs:
                shell.run(command)
        for command in downs:
            shell.run(command)
    finally:
        if not downs:
            subprocess.run([VSIM, "down"], env=shell.env, capture_output=True, timeout=300)
        leftovers = processes.in_session(shell.pid) if shell.pid else []
        processes.kill(leftovers)  # whatever happens, this test leaves nothing running
    assert downs, "the examples stop the cluster they start (`vsim down`)"
    assert leftovers == []


async def test_readme_sdk_example_runs(vcenter, tmp_path):
    (example,) = [b.text for b in every_block() if b.language == "python"]
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {
        **os.environ,
        "VSIM_SERVER": vcenter.endpoint,
        "VSIM_THUMBPRINT": vcenter.thumbprint,
        "VSIM_PASSWORD": vcenter.core.sessions.initial_password(),
    }
    # The session's vCenter serves on this test's event loop: wait without blocking it.
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert any(line.startswith("sdk-01 esxi-") and line.endswith(" poweredOn") for line in lines)
