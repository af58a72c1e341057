"""Run a Markdown page's commands as a reader would, and compare what they print with what the page shows.

Fenced blocks:
- ```console: `$ command` lines (a trailing backslash continues one) followed by the expected output:
  stdout and stderr merged, no TTY. `...` inside a line matches any text; a line that is exactly `...`
  matches any number of lines. A command must exit 0 unless its expected output has a line starting with
  `error:` or the next command is `echo $?`.
- ```bash / ```sh / ```shell: every command runs and must exit 0; its output is not compared.
- ```python: runs with the project's python and must exit 0; an ```output block right after it is what it prints
  (compared as a console block's output is).
All of a page's commands run in one bash, in order, so `cd` and `export` carry over.

Directives are HTML comments (invisible on GitHub). On the line right before a fence:
`<!-- doc: skip: REASON -->`, `<!-- doc: background wait=URL|PORT -->`, `<!-- doc: timeout=SECONDS -->`.
Anywhere: `<!-- doc: setup` / commands / `-->` runs hidden commands at that point; `<!-- doc: cleanup` / ... /
`-->` runs at the end of the page, even after a failure. On the page's first lines:
`<!-- doc: page cwd=repo needs=EXE,EXE -->` (run in the checkout instead of a fresh directory; executables the
page needs).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TIMEOUT = 300.0
SHELLS = ("bash", "sh", "shell")
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doc:\s*(.*?)\s*-->\s*$")
_OPEN_DIRECTIVE = re.compile(r"^<!--\s*doc:\s*(setup|cleanup)\s*$")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclass
class Command:
    text: str
    line: int
    expected: list[str] | None = None  # None: output not compared


@dataclass
class Block:
    kind: str  # console | shell | python | setup | cleanup
    line: int
    commands: list[Command]
    skip: str | None = None
    background: str | None = None  # what to wait for: a URL or a port
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    cwd_repo: bool = False
    needs: list[str] = field(default_factory=list)

    @property
    def cleanups(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "cleanup"]


class DocFailure(AssertionError):
    pass


# --- parsing -----------------------------------------------------------------------------------------


def parse(path: Path) -> Page:
    lines = path.read_text().splitlines()
    page = Page(path, [])
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = _OPEN_DIRECTIVE.match(line.strip())
        if opened:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            if end is None:
                raise DocFailure(f"{path}:{i + 1}: `<!-- doc: {opened[1]}` is never closed by `-->`")
            page.blocks.append(Block(opened[1], i + 1, _shell_commands(lines[i + 1 : end], i + 2)))
            i = end + 1
            continue
        directive = _DIRECTIVE.match(line.strip())
        if directive:
            pending = _directive(directive[1], path, i + 1, page)
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence and fence[2]:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence[1])), len(lines))
            body = lines[i + 1 : end]
            if fence[2].lower() == "output":
                _attach_output(page, body, path, i + 1)
                pending = {}
                i = end + 1
                continue
            block = _block(fence[2].lower(), body, i + 2, pending)
            if block is not None:
                page.blocks.append(block)
            pending = {}
            i = end + 1
            continue
        if line.strip():
            pending = {}
        i += 1
    return page


def _directive(text: str, path: Path, line: int, page: Page) -> dict[str, str]:
    if text.startswith("skip:"):
        reason = text[len("skip:") :].strip()
        if not reason:
            raise DocFailure(f"{path}:{line}: a skip needs a reason")
        return {"skip": reason}
    words = shlex.split(text)
    if words and words[0] == "page":
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key == "cwd" and value == "repo":
                page.cwd_repo = True
            elif key == "needs":
                page.needs = [n for n in value.split(",") if n]
            else:
                raise DocFailure(f"{path}:{line}: unknown page option {word!r}")
        return {}
    out: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        if key == "background":
            out["background"] = ""
        elif key == "wait":
            out["wait"] = value
        elif key == "timeout":
            out["timeout"] = value
        else:
            raise DocFailure(f"{path}:{line}: unknown directive {word!r}")
    return out


def _attach_output(page: Page, body: list[str], path: Path, line: int) -> None:
    """An ```output block is the expected output of the ```python block just before it."""
    previous = page.blocks[-1] if page.blocks else None
    if previous is None or previous.kind != "python" or previous.commands[0].expected is not None:
        raise DocFailure(f"{path}:{line}: an ```output block must follow a ```python block")
    expected = list(body)
    while expected and not expected[-1].strip():
        expected.pop()
    previous.commands[0].expected = expected


def _block(lang: str, body: list[str], first: int, pending: dict[str, str]) -> Block | None:
    if lang == "console":
        commands = _console_commands(body, first)
        kind = "console"
    elif lang in SHELLS:
        commands = _shell_commands(body, first)
        kind = "shell"
    elif lang == "python":
        commands = [Command("\n".join(body), first)]
        kind = "python"
    else:
        return None
    if not commands:
        return None
    block = Block(kind, first - 1, commands, skip=pending.get("skip"))
    if "background" in pending:
        block.background = pending.get("wait") or ""
    if "timeout" in pending:
        block.timeout = float(pending["timeout"])
    return block


def _joined(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Logical lines: a trailing backslash continues a line, a here-document runs to its delimiter."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = first
    heredoc: str | None = None
    for n, line in enumerate(lines, first):
        if not current:
            start = n
        current.append(line)
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            else:
                continue
        else:
            opened = _HEREDOC.search(line)
            if opened and not line.lstrip().startswith("#"):
                heredoc = opened[1]
                continue
        if not line.endswith("\\"):
            out.append((start, "\n".join(current)))
            current = []
    if current:
        out.append((start, "\n".join(current)))
    return out


def _shell_commands(lines: list[str], first: int) -> list[Command]:
    return [Command(text, n) for n, text in _joined(lines, first) if text.strip() and not text.lstrip().startswith("#")]


def _console_commands(lines: list[str], first: int) -> list[Command]:
    commands: list[Command] = []
    n = 0
    while n < len(lines):
        line = lines[n]
        if line.startswith("$ "):
            text = [line[2:]]
            while text[-1].endswith("\\") and n + 1 < len(lines):
                n += 1
                text.append(lines[n])
            commands.append(Command("\n".join(text), first + n - len(text) + 1, expected=[]))
        elif commands:
            commands[-1].expected.append(line)  # type: ignore[union-attr]
        n += 1
    for c in commands:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
    return commands


# --- matching ----------------------------------------------------------------------------------------


def matches(expected: list[str], actual: list[str]) -> bool:
    """`...` inside a line matches any text, a `...` line any number of lines; trailing spaces never count."""
    patterns = [None if e.strip() == "..." else _line_pattern(e.rstrip()) for e in expected]
    actual = [a.rstrip() for a in actual]
    memo: dict[tuple[int, int], bool] = {}

    def at(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        if i == len(patterns):
            ok = j == len(actual)
        elif patterns[i] is None:
            ok = at(i + 1, j) or (j < len(actual) and at(i, j + 1))
        else:
            ok = j < len(actual) and patterns[i].fullmatch(actual[j]) is not None and at(i + 1, j + 1)
        memo[(i, j)] = ok
        return ok

    return at(0, 0)


def _line_pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in line.split("...")))


# --- running -----------------------------------------------------------------------------------------


class Shell:
    """One bash for a whole page, fed one command at a time; its process group holds everything it starts."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float) -> tuple[list[str], int]:
        marker = f"__docrun_{uuid.uuid4().hex}__"
        # stdin is /dev/null: a command must not read the rest of the page's script; `(exit rc)` keeps $?
        script = f"{{ {command}\n}} </dev/null\n__rc=$?; printf '\\n{marker} %d\\n' \"$__rc\"; (exit $__rc)\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(script)
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise DocFailure(f"no answer within {timeout:g} s; it printed:\n" + "".join(out)) from None
            if line is None:
                raise DocFailure("the page's shell exited; it printed:\n" + "".join(out))
            if line.startswith(marker):
                rc = int(line.split()[1])
                if out and out[-1] == "\n":
                    out.pop()
                elif out:
                    out[-1] = out[-1].rstrip("\n")
                return "".join(out).splitlines(), rc
            out.append(line)

    def close(self) -> None:
        """Stop the shell and everything started from it (servers in the background too)."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # what ignored SIGTERM in time
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@dataclass
class Result:
    ran: int = 0
    skipped: list[str] = field(default_factory=list)


def run_page(page: Page, cwd: Path, env: dict[str, str], python: str) -> Result:
    """Run every block of `page` in order; raises DocFailure naming the page line of the first difference."""
    shell = Shell(cwd, env)
    result = Result()
    logs = cwd / ".docrun" if not page.cwd_repo else Path(env.get("TMPDIR", "/tmp")) / f"docrun-{uuid.uuid4().hex}"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for block in page.blocks:
            if block.kind == "cleanup":
                continue
            if block.skip:
                result.skipped.append(f"{page.path.name}:{block.line}: {block.skip}")
                continue
            if block.background is not None:
                _run_background(shell, block, page, logs)
            elif block.kind == "python":
                script = logs / f"block-{block.line}.py"
                script.write_text(block.commands[0].text + "\n")
                command = Command(
                    f"{shlex.quote(python)} {shlex.quote(str(script))}", block.line, block.commands[0].expected
                )
                _run(shell, command, block, page)
            else:
                for i, command in enumerate(block.commands):
                    following = block.commands[i + 1].text.strip() if i + 1 < len(block.commands) else ""
                    _run(shell, command, block, page, may_fail=following == "echo $?")
            result.ran += len(block.commands)
    finally:
        try:
            for block in page.cleanups:
                for command in block.commands:
                    shell.run(command.text, block.timeout)
        finally:
            shell.close()
    return result


def _run(shell: Shell, command: Command, block: Block, page: Page, may_fail: bool = False) -> None:
    where = f"{page.path.name}:{command.line}"
    try:
        out, rc = shell.run(command.text, block.timeout)
    except DocFailure as exc:
        raise DocFailure(f"{where}: $ {command.text}\n{exc}") from None
    shown_error = command.expected is not None and any(e.startswith("error:") for e in command.expected)
    if rc != 0 and not (may_fail or shown_error):
        raise DocFailure(f"{where}: $ {command.text}\nexited {rc}; it printed:\n" + "\n".join(out))
    if command.expected is not None and not matches(command.expected, out):
        raise DocFailure(
            f"{where}: $ {command.text}\nthe page shows:\n"
            + "\n".join(command.expected)
            + "\nbut it printed:\n"
            + "\n".join(out)
        )


def _run_background(shell: Shell, block: Block, page: Page, logs: Path) -> None:
    target = block.background or ""
    if target and _up(target):  # what answers there is not what this page starts: say so rather than test it
        where = f"{page.path.name}:{block.line}"
        raise DocFailure(f"{where}: {target} already answers before the page starts its server: stop what runs there")
    for command in block.commands:
        log = logs / f"background-{command.line}.log"
        out, _ = shell.run(f"{{ {command.text}\n}} >{shlex.quote(str(log))} 2>&1 </dev/null &\necho $!", 10)
        pid = int(out[-1])
        _wait(block.background or "", pid, log, block.timeout, f"{page.path.name}:{command.line}: $ {command.text}")
        if command.expected:
            printed = log.read_text().splitlines()
            if not matches([*command.expected, "..."], printed):
                raise DocFailure(
                    f"{page.path.name}:{command.line}: $ {command.text}\nthe page shows:\n"
                    + "\n".join(command.expected)
                    + "\nbut it printed:\n"
                    + "\n".join(printed[:20])
                )


def _wait(target: str, pid: int, log: Path, timeout: float, what: str) -> None:
    """Until `target` (a URL answering 200, or a port listening) is up; fails if the process exits first."""
    if not target:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise DocFailure(f"{what}\nexited before {target} was up; it printed:\n{log.read_text()[-3000:]}")
        if _up(target):
            return
        time.sleep(0.2)
    raise DocFailure(f"{what}\n{target} not up after {timeout:g} s; it printed:\n{log.read_text()[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _up(target: str) -> bool:
    if target.isdigit():
        try:
            socket.create_connection(("127.0.0.1", int(target)), timeout=0.5).close()
            return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(target, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
