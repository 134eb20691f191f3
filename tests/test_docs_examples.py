"""Every fenced code block in README.md and docs/*.md (and docs/ subfolders) is checked, so a
documented example that breaks fails `make test`.

A block is checked by its language:

- ``python``: run as a script (`sys.executable`) in a temporary directory holding a copy of
  the repository's `routing.yaml` and `policies/`, with no real keys in the environment
  (`*_API_KEY`, `GATEWAY_*` and the other variables `gateway.settings.Settings` reads are
  removed). It must run as pasted: no top-level `await`. A traceback names the Markdown file
  and line. It must close its clients: aiohttp's "Unclosed client session" fails it.
- ``console``, ``sh``, ``bash``, ``shell``: each command runs with bash in such a directory,
  the venv's bin directory first on PATH, all the block's commands in one shell (so `cd` and
  variables carry over). Lines starting with `#` are comments; a line ending in `\\` (or with
  an open quote) continues on the next. When some lines start with `$ `, only those (and
  their continuations) are commands, and the lines after a command up to the next one are
  its expected output, compared as for an `output` block. Every command must exit 0.
- ``yaml``: a policy (top-level `providers:` and `tasks:`) must load with `parse_policy`, with
  dummy keys in its environment and the registered provider types; any other YAML must
  `yaml.safe_load_all`.
- ``json`` must `json.loads`; ``toml`` must `tomllib.loads`.
- Anything else (``dockerfile``, ``text``, a block with no language) needs a marker.

Markers are HTML comments on the line(s) right before a block, one per comment:

- `<!-- docs-test: skip: REASON -->`: not run. The reason is required; the skips are few and
  `test_skipped_examples_give_a_reason` lists them all in its output (`pytest -rP`).
- `<!-- docs-test: continue -->`: a Python block that runs after the previous Python block(s)
  of the same file, as one script.
- `<!-- docs-test: fake-upstreams -->`: a FakeUpstream is started for the block, and its
  environment gets OPENAI_BASE_URL (`<url>/v1`), ANTHROPIC_BASE_URL, OLLAMA_BASE_URL,
  AZURE_OPENAI_ENDPOINT and dummy OPENAI_API_KEY, ANTHROPIC_API_KEY and AZURE_OPENAI_API_KEY,
  so an example written for the real vendors runs offline as pasted.
- `<!-- docs-test: server -->`: `gateway serve --simulate` is started on a free port of
  127.0.0.1 for the block (shell or Python), and `localhost:8000`, `localhost:8080`,
  `127.0.0.1:8000` and `127.0.0.1:8080` in the block are rewritten to its address. The block
  also gets FAKE_UPSTREAM_URL, the address of the simulation's fake (to script faults).
  `<!-- docs-test: server: keys -->` starts it with GATEWAY_API_KEYS and GATEWAY_ADMIN_KEYS
  set and gives the block the keys as GATEWAY_KEY and ADMIN_KEY.
- `<!-- docs-test: output -->` before a block (usually ``text``): the expected output (stdout
  and stderr together) of the previous Python or shell block of the file. Lines are compared
  after stripping trailing whitespace (trailing blank lines are ignored); a line `...` matches
  any number of lines, and `...` inside a line matches any text within that line.
- `<!-- docs-test: exit=N -->`: a shell block whose last command must exit with status N
  (the others still with 0), for a failing command shown on purpose.
- `<!-- docs-test: policy-error: TEXT -->`: a YAML policy that must be refused: loading it
  raises `PolicyError` whose message contains TEXT.

A marker that is not right before a block, an unknown marker, a skip with no reason or an
unmarked block of another language fails `test_docs_markers`. The parsing and checking
functions take a text, so the tests at the end feed them broken examples.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from server_harness import free_port

from gateway.errors import PolicyError
from gateway.policy import parse_policy
from gateway.providers import LLMFactory
from gateway.settings import Settings
from gateway.testing import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MAX_SKIPS = 12
"""The most blocks README.md and docs/*.md may skip; every one is listed by a test."""
RUN_TIMEOUT_S = 120.0
"""A hang guard for one example's subprocess, not a speed goal."""

PYTHON = {"python", "py", "python3"}
SHELL = {"console", "sh", "bash", "shell"}
YAML = {"yaml", "yml"}
FLAGS = {"continue", "fake-upstreams", "server", "output"}
VALUED = {"skip", "policy-error", "exit", "server"}

DUMMY_KEYS = {
    "OPENAI_API_KEY": "sk-docs-test-openai",
    "ANTHROPIC_API_KEY": "sk-docs-test-anthropic",
    "AZURE_OPENAI_API_KEY": "docs-test-azure",
}
SERVER_KEYS = {"GATEWAY_KEY": "docs-test-client-key", "ADMIN_KEY": "docs-test-admin-key"}
ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):(?:8000|8080)\b")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
PART = "\x1edocs-test-part {}\x1e"
STEP = re.compile(r"\n?\x1edocs-test-rc (\d+) (\d+)\x1e\n")


NO_REASON = "a skip needs a reason: `<!-- docs-test: skip: REASON -->`"
UNCLOSED = ("Unclosed client session", "Unclosed connector")
"""What aiohttp prints at exit about a client an example never closed."""


class DocsExampleError(AssertionError):
    """A documented example that does not hold; the message starts with `file:line:`."""


# --- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    name: str
    value: str | None
    line: int


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block: `line` is its opening fence's line (1-based)."""

    path: str
    line: int
    lang: str
    code: str
    markers: tuple[Marker, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def first_code_line(self) -> int:
        return self.line + 1

    def marker(self, name: str) -> Marker | None:
        return next((m for m in self.markers if m.name == name), None)

    def has(self, name: str) -> bool:
        return self.marker(name) is not None


@dataclass(slots=True)
class Example:
    """What one test checks: a block, or a chain of Python blocks run as one script, with the
    documented outputs that follow them."""

    kind: str  # python, shell, yaml, json, toml, skip
    blocks: list[Block]
    outputs: dict[int, Block] = field(default_factory=dict)  # index in blocks -> output block

    @property
    def first(self) -> Block:
        return self.blocks[0]

    @property
    def id(self) -> str:
        return f"{self.first.where}-{self.kind}"

    def marker(self, name: str) -> Marker | None:
        return next((m for b in self.blocks if (m := b.marker(name)) is not None), None)

    def has(self, name: str) -> bool:
        return self.marker(name) is not None


@dataclass(slots=True)
class Document:
    path: str
    examples: list[Example]
    problems: list[str]


def parse_marker(text: str, line: int) -> Marker:
    """`skip: REASON`, `continue`, `exit=1`... into a Marker; DocsExampleError if unknown."""
    name, sep, value = text.partition(":")
    if not sep and "=" in text:
        name, _, value = text.partition("=")
        sep = "="
    name = name.strip()
    if name not in FLAGS | VALUED:
        raise DocsExampleError(f"unknown docs-test marker {text!r}")
    if sep and name not in VALUED:
        raise DocsExampleError(f"docs-test marker {name!r} takes no value")
    if name in VALUED - FLAGS - {"skip"} and not value.strip():
        raise DocsExampleError(f"docs-test marker {name!r} needs a value (`{name}: ...`)")
    if name == "exit" and not value.strip().isdigit():
        raise DocsExampleError(f"docs-test marker exit={value!r}: the status must be a number")
    if name == "server" and sep and value.strip() != "keys":
        raise DocsExampleError(f"docs-test marker server: {value.strip()!r}: only `keys` exists")
    return Marker(name, value.strip() if sep else None, line)


def parse_blocks(text: str, path: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text with their markers, and the problems found."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: list[Marker] = []
    broken: list[str] = []  # what is wrong with the pending markers, told at their block
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        number = i + 1
        marker = MARKER.match(stripped)
        if marker:
            try:
                pending.append(parse_marker(marker.group("body"), number))
            except DocsExampleError as exc:
                broken.append(str(exc))
                pending.append(Marker("invalid", None, number))
            i += 1
            continue
        if "docs-test:" in stripped and stripped.startswith("<!--"):
            problems.append(f"{path}:{number}: a docs-test marker must be one `<!-- ... -->` line")
        fence = FENCE.match(lines[i])
        if fence is None:
            problems.extend(_stray(path, pending, broken))
            pending, broken = [], []
            i += 1
            continue
        indent = len(fence.group("indent"))
        mark = fence.group("fence")
        info = fence.group("info").strip()
        lang = info.split()[0].lower() if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            candidate = lines[j]
            if candidate.strip().startswith(mark[0] * len(mark)) and not candidate.strip().strip(
                mark[0]
            ):
                break
            body.append(
                candidate[indent:] if candidate[:indent].strip() == "" else candidate.lstrip()
            )
            j += 1
        else:
            problems.append(f"{path}:{number}: the code block is never closed")
        problems.extend(f"{path}:{number}: {message}" for message in broken)
        if any(m.name == "skip" and not m.value for m in pending):
            problems.append(f"{path}:{number}: {NO_REASON}")
        markers = tuple(m for m in pending if m.name != "invalid")
        blocks.append(Block(path, number, lang, "\n".join(body) + "\n", markers))
        pending, broken = [], []
        i = j + 1
    problems.extend(_stray(path, pending, broken))
    return blocks, problems


def _stray(path: str, markers: Sequence[Marker], broken: Sequence[str]) -> list[str]:
    found = [
        f"{path}:{m.line}: a docs-test marker that is not right before a code block"
        for m in markers
    ]
    return found + [f"{path}:{markers[0].line}: {message}" for message in broken]


def plan_examples(blocks: Sequence[Block]) -> tuple[list[Example], list[str]]:
    """Group blocks into what the tests run: Python chains, shell blocks and their outputs."""
    examples: list[Example] = []
    problems: list[str] = []
    last_python: Example | None = None
    last_runnable: tuple[Example, int] | None = None
    for block in blocks:
        skip = block.marker("skip")
        if skip is not None:
            examples.append(Example("skip", [block]))
            if block.lang in PYTHON | SHELL:
                last_runnable = None
            continue
        if block.has("output"):
            if last_runnable is None:
                problems.append(
                    f"{block.where}: an `output` block must follow a Python or shell block "
                    "that runs"
                )
            else:
                example, index = last_runnable
                if index in example.outputs:
                    problems.append(
                        f"{block.where}: {example.blocks[index].where} already has an output block"
                    )
                example.outputs[index] = block
            continue
        if block.has("continue"):
            if block.lang not in PYTHON:
                problems.append(f"{block.where}: `continue` applies to Python blocks only")
                continue
            if last_python is None:
                problems.append(f"{block.where}: `continue` with no Python block before it")
                continue
            last_python.blocks.append(block)
            last_runnable = (last_python, len(last_python.blocks) - 1)
            continue
        if block.lang in PYTHON:
            last_python = Example("python", [block])
            examples.append(last_python)
            last_runnable = (last_python, 0)
        elif block.lang in SHELL:
            example = Example("shell", [block])
            examples.append(example)
            last_runnable = (example, 0)
        elif block.lang in YAML:
            examples.append(Example("yaml", [block]))
        elif block.lang == "json":
            examples.append(Example("json", [block]))
        elif block.lang == "toml":
            examples.append(Example("toml", [block]))
        else:
            problems.append(
                f"{block.where}: a ```{block.lang or '(no language)'} block needs a marker: "
                "`<!-- docs-test: output -->` or `<!-- docs-test: skip: REASON -->`"
            )
            continue
        misplaced = [
            m.name
            for m in block.markers
            if (m.name in {"server", "fake-upstreams"} and block.lang not in PYTHON | SHELL)
            or (m.name == "exit" and block.lang not in SHELL)
            or (m.name == "policy-error" and block.lang not in YAML)
        ]
        if misplaced:
            problems.append(
                f"{block.where}: {', '.join(misplaced)} does not apply to a {block.lang} block"
            )
    return examples, problems


def read_document(text: str, path: str) -> Document:
    blocks, problems = parse_blocks(text, path)
    examples, more = plan_examples(blocks)
    return Document(path, examples, sorted(problems + more, key=_line_of))


def _line_of(problem: str) -> int:
    found = re.match(r"[^:]*:(\d+)", problem)
    return int(found.group(1)) if found else 0


def documented_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# --- outputs ----------------------------------------------------------------------------------


def _line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


def _trim(lines: Sequence[str]) -> list[str]:
    out = [line.rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def output_matches(expected: Sequence[str], actual: Sequence[str]) -> bool:
    """Line by line; an expected `...` line matches any number of lines, `...` within a line
    any text within it. Trailing whitespace and trailing blank lines do not count."""
    want, got = _trim(expected), _trim(actual)
    patterns = [None if line.strip() == "..." else _line_pattern(line) for line in want]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        if i == len(patterns):
            result = j == len(got)
        elif patterns[i] is None:
            result = any(match(i + 1, k) for k in range(j, len(got) + 1))
        else:
            pattern = patterns[i]
            assert pattern is not None
            result = j < len(got) and pattern.fullmatch(got[j]) is not None and match(i + 1, j + 1)
        memo[(i, j)] = result
        return result

    return match(0, 0)


def check_output(where: str, expected: Sequence[str], actual: str) -> None:
    actual_lines = actual.splitlines()
    if output_matches(expected, actual_lines):
        return
    diff = "\n".join(
        difflib.unified_diff(
            _trim(expected), _trim(actual_lines), "documented", "actual", lineterm="", n=2
        )
    )
    raise DocsExampleError(f"{where}: the documented output does not match:\n{diff}")


# --- environments -----------------------------------------------------------------------------


def clean_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment without real keys or gateway settings, the venv first on PATH."""
    drop = set(Settings.model_fields) | {
        "FAKE_UPSTREAM_URL",
        "PROMETHEUS_MULTIPROC_DIR",
        "REDIS_URL",
    }
    env = {
        k: v
        for k, v in environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("GATEWAY_") and k not in drop
    }
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


@contextmanager
def example_directory(root: Path = ROOT) -> Iterator[Path]:
    """A temporary directory holding a copy of routing.yaml and policies/."""
    with tempfile.TemporaryDirectory(prefix="docs-example-") as folder:
        target = Path(folder)
        shutil.copy(root / "routing.yaml", target / "routing.yaml")
        shutil.copytree(root / "policies", target / "policies")
        yield target


@dataclass(slots=True)
class Stage:
    """What an example runs against: its environment and the server address, if any."""

    env: dict[str, str]
    server_url: str | None = None


@contextmanager
def fake_upstreams(env: dict[str, str]) -> Iterator[None]:
    with FakeUpstream.spawn() as fake:
        env.update(DUMMY_KEYS)
        env["OPENAI_BASE_URL"] = fake.openai_base_url
        env["ANTHROPIC_BASE_URL"] = fake.anthropic_base_url
        env["OLLAMA_BASE_URL"] = fake.ollama_base_url
        env["AZURE_OPENAI_ENDPOINT"] = fake.azure_endpoint
        yield


@contextmanager
def simulated_server(env: dict[str, str], cwd: Path, *, keys: bool, where: str) -> Iterator[str]:
    """`gateway serve --simulate` on a free port; yields its URL and sets the block's env."""
    server_env = dict(env)
    if keys:
        server_env["GATEWAY_API_KEYS"] = SERVER_KEYS["GATEWAY_KEY"]
        server_env["GATEWAY_ADMIN_KEYS"] = SERVER_KEYS["ADMIN_KEY"]
        env.update(SERVER_KEYS)
    log_path = cwd / ".gateway-serve.log"
    for _ in range(3):  # a free port can be taken before the server binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--simulate", "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env,
                cwd=cwd,
            )
        try:
            if _wait_ready(process, url):
                found = re.search(r"FakeUpstream at (http://[\w.:\[\]]+)", log_path.read_text())
                if found:
                    env["FAKE_UPSTREAM_URL"] = found.group(1)
                yield url
                return
        finally:
            _stop(process)
        if process.returncode != 3:  # 3: could not bind; anything else is not a port race
            break
    raise DocsExampleError(
        f"{where}: gateway serve --simulate did not start:\n{log_path.read_text(errors='replace')}"
    )


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            answer = httpx.get(url + "/healthz", timeout=1.0)
            # its own answer, not that of another example's server that took the port first
            if answer.status_code == 200 and answer.json().get("pid") == process.pid:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def stage(example: Example, cwd: Path) -> Iterator[Stage]:
    env = clean_environ()
    with ExitStack() as stack:
        if example.has("fake-upstreams"):
            stack.enter_context(fake_upstreams(env))
        server = example.marker("server")
        url = None
        if server is not None:
            url = stack.enter_context(
                simulated_server(env, cwd, keys=server.value == "keys", where=example.first.where)
            )
        yield Stage(env, url)


def _address(code: str, url: str | None) -> str:
    return code if url is None else ADDRESS.sub(url.removeprefix("http://"), code)


def _run(args: Sequence[str], *, cwd: Path, env: Mapping[str, str], where: str) -> tuple[int, str]:
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise DocsExampleError(
            f"{where}: still running after {RUN_TIMEOUT_S:g} s (a command that runs until "
            f"stopped needs a skip marker):\n{out.decode(errors='replace')}"
        ) from None
    return process.returncode, out.decode(errors="replace")


# --- Python -----------------------------------------------------------------------------------

DRIVER = """\
import json, sys, types
parts = json.load(open(sys.argv[1], encoding="utf-8"))
main = types.ModuleType("__main__")
main.__builtins__ = __builtins__
sys.modules["__main__"] = main
for index, part in enumerate(parts):
    if index:
        print(PART.format(index), flush=True)
    sys.argv = [part["file"]]
    source = "\\n" * (part["line"] - 1) + part["source"]
    exec(compile(source, part["file"], "exec", dont_inherit=True), main.__dict__)
"""


def run_python(example: Example, cwd: Path, where_root: Path = ROOT) -> None:
    """Run a Python chain as one script; DocsExampleError naming the block that failed."""
    with stage(example, cwd) as st:
        parts = [
            {
                "file": _source_name(block, where_root),
                "line": block.first_code_line,
                "source": _address(block.code, st.server_url),
            }
            for block in example.blocks
        ]
        (cwd / ".docs-parts.json").write_text(json.dumps(parts), encoding="utf-8")
        (cwd / ".docs-driver.py").write_text(f"PART = {PART!r}\n{DRIVER}", encoding="utf-8")
        status, output = _run(
            [sys.executable, ".docs-driver.py", ".docs-parts.json"],
            cwd=cwd,
            env=st.env,
            where=example.first.where,
        )
    pieces = re.split(r"\x1edocs-test-part \d+\x1e\n", output)
    if status != 0:
        failed = example.blocks[len(pieces) - 1]
        raise DocsExampleError(
            f"{failed.where}: the Python example failed (exit status {status}):\n{output}"
        )
    for index, piece in enumerate(pieces):
        if any(warning in piece for warning in UNCLOSED):
            raise DocsExampleError(
                f"{example.blocks[min(index, len(example.blocks) - 1)].where}: the example "
                f"leaves a client open (close it, or use `async with`):\n{output}"
            )
    for index, expected in example.outputs.items():
        check_output(
            f"{expected.where} (output of {example.blocks[index].where})",
            expected.code.splitlines(),
            pieces[index] if index < len(pieces) else "",
        )


def _source_name(block: Block, root: Path) -> str:
    path = root / block.path
    return str(path) if path.exists() else block.path


# --- shell ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    text: str
    line: int
    expected: tuple[str, ...] | None  # lines shown after a `$ ` command, if any


def _complete(command: str) -> bool:
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def shell_commands(block: Block) -> list[Command]:
    """The commands of a shell block and, after `$ ` prompts, their documented output."""
    lines = block.code.splitlines()
    prompted = any(line.startswith("$ ") or line == "$" for line in lines)
    commands: list[Command] = []
    current: list[str] = []
    start = 0
    output: list[str] = []

    def flush() -> None:
        if current:
            shown = tuple(output) if prompted and output else None
            commands.append(Command("\n".join(current), start, shown))

    for offset, line in enumerate(lines):
        number = block.first_code_line + offset
        if current and not _complete("\n".join(current)):
            current.append(line)
            continue
        if line.lstrip().startswith("#") or (not prompted and not line.strip()):
            continue
        if prompted and not line.startswith("$"):
            output.append(line)
            continue
        flush()
        current = [line[2:] if line.startswith("$ ") else line]
        start = number
        output = []
    flush()
    return commands


def run_shell(example: Example, cwd: Path) -> None:
    block = example.first
    commands = shell_commands(block)
    exit_marker = block.marker("exit")
    last_status = int(exit_marker.value or 0) if exit_marker else 0
    with stage(example, cwd) as st:
        script = []
        for index, command in enumerate(commands):
            want = last_status if index == len(commands) - 1 else 0
            script.append(_address(command.text, st.server_url))
            script.append(
                f"__rc=$?; printf '\\n\\036docs-test-rc {index} %d\\036\\n' $__rc; "
                f"[ $__rc -eq {want} ] || exit 0"
            )
        status, output = _run(
            ["bash", "--noprofile", "--norc", "-c", "\n".join(script) + "\n"],
            cwd=cwd,
            env=st.env,
            where=block.where,
        )
    outputs: list[str] = []
    statuses: list[int] = []
    rest = output
    while (found := STEP.search(rest)) is not None:
        outputs.append(rest[: found.start()])
        statuses.append(int(found.group(2)))
        rest = rest[found.end() :]
    for index, command in enumerate(commands):
        want = last_status if index == len(commands) - 1 else 0
        if index >= len(statuses):
            raise DocsExampleError(
                f"{block.path}:{command.line}: the shell stopped in `{command.text}` "
                f"(status {status}):\n{rest}"
            )
        if statuses[index] != want:
            raise DocsExampleError(
                f"{block.path}:{command.line}: `{command.text}` exited with {statuses[index]}, "
                f"not {want}:\n{outputs[index]}"
            )
        if command.expected is not None:
            check_output(f"{block.path}:{command.line}", command.expected, outputs[index])
    if 0 in example.outputs:
        out_block = example.outputs[0]
        check_output(
            f"{out_block.where} (output of {block.where})",
            out_block.code.splitlines(),
            "".join(outputs),
        )


# --- data -------------------------------------------------------------------------------------


def is_policy(data: object) -> bool:
    return isinstance(data, dict) and "providers" in data and "tasks" in data


def check_yaml(block: Block) -> None:
    try:
        documents = list(yaml.safe_load_all(block.code))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = block.first_code_line + mark.line if mark is not None else block.line
        raise DocsExampleError(f"{block.path}:{line}: not YAML: {exc}") from None
    expected_error = block.marker("policy-error")
    if not any(is_policy(d) for d in documents):
        if expected_error is not None:
            raise DocsExampleError(f"{block.where}: policy-error on YAML that is not a policy")
        return
    environ = {**DUMMY_KEYS, "OLLAMA_BASE_URL": "http://127.0.0.1:11434"}
    try:
        parse_policy(
            block.code,
            source=block.where,
            environ=environ,
            provider_types=LLMFactory.registered_providers(),
        )
    except PolicyError as exc:
        if expected_error is None:
            raise DocsExampleError(f"{block.where}: the policy does not load: {exc}") from None
        if (expected_error.value or "") not in str(exc):
            raise DocsExampleError(
                f"{block.where}: the policy is refused, but not with "
                f"{expected_error.value!r}: {exc}"
            ) from None
        return
    if expected_error is not None:
        raise DocsExampleError(
            f"{block.where}: the policy loads, but should be refused with {expected_error.value!r}"
        )


def check_json(block: Block) -> None:
    try:
        json.loads(block.code)
    except json.JSONDecodeError as exc:
        line = block.first_code_line + exc.lineno - 1
        raise DocsExampleError(f"{block.path}:{line}: not JSON: {exc}") from None


def check_toml(block: Block) -> None:
    try:
        tomllib.loads(block.code)
    except tomllib.TOMLDecodeError as exc:
        raise DocsExampleError(f"{block.where}: not TOML: {exc}") from None


def run_example(example: Example, root: Path = ROOT) -> None:
    """Check one example; raises DocsExampleError naming the file and line."""
    if example.kind == "skip":
        return
    if example.kind == "yaml":
        check_yaml(example.first)
    elif example.kind == "json":
        check_json(example.first)
    elif example.kind == "toml":
        check_toml(example.first)
    else:
        with example_directory(root) as cwd:
            if example.kind == "python":
                run_python(example, cwd, root)
            else:
                run_shell(example, cwd)


# --- the repository's docs --------------------------------------------------------------------


def _read_all() -> list[Document]:
    return [
        read_document(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        for path in documented_files()
    ]


DOCUMENTS = _read_all()
EXAMPLES = {e.id: e for d in DOCUMENTS for e in d.examples if e.kind != "skip"}
SKIPPED = [e for d in DOCUMENTS for e in d.examples if e.kind == "skip"]
RUNNERS = 4


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, DocsExampleError | None]:
    """Run the examples this session selected, four at a time (they wait on subprocesses)."""
    wanted = [
        item.callspec.params["example_id"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_docs_example" and hasattr(item, "callspec")
    ]

    def outcome(example_id: str) -> DocsExampleError | None:
        try:
            run_example(EXAMPLES[example_id])
        except DocsExampleError as exc:
            return exc
        except Exception as exc:  # the runner's own failure, told at its example
            return DocsExampleError(f"{EXAMPLES[example_id].first.where}: {exc!r}")
        return None

    with ThreadPoolExecutor(RUNNERS) as pool:
        return dict(zip(wanted, pool.map(outcome, wanted), strict=True))


@pytest.mark.parametrize("example_id", list(EXAMPLES))
def test_docs_example(example_id: str, results: dict[str, DocsExampleError | None]) -> None:
    error = results[example_id]
    if error is not None:
        raise error


def test_docs_markers() -> None:
    problems = [p for d in DOCUMENTS for p in d.problems]
    assert not problems, "\n".join(problems)


def skip_reason(example: Example) -> str:
    marker = example.first.marker("skip")
    return (marker.value or "") if marker is not None else ""


def test_skipped_examples_give_a_reason() -> None:
    listing = [f"{e.first.where}: {skip_reason(e) or '(no reason)'}" for e in SKIPPED]
    print(f"{len(SKIPPED)} documented blocks are not run:", *listing, sep="\n  ")
    assert all(skip_reason(e) for e in SKIPPED), "\n".join(listing)
    assert len(SKIPPED) <= MAX_SKIPS, "too many skipped blocks:\n" + "\n".join(listing)


def test_every_doc_is_covered() -> None:
    paths = {d.path for d in DOCUMENTS}
    assert "README.md" in paths
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} <= paths
    assert EXAMPLES, "no example found"


# --- the runner, on examples broken on purpose ------------------------------------------------


def _document(text: str) -> Document:
    return read_document(text, "example.md")


def _failure(text: str) -> str:
    document = _document(text)
    assert not document.problems, document.problems
    with pytest.raises(DocsExampleError) as caught:
        for example in document.examples:
            run_example(example)
    return str(caught.value)


def test_a_broken_python_block_fails_naming_its_file_and_line() -> None:
    message = _failure(
        "# Example\n\nText.\n\n```python\nvalue = 1\nraise ValueError(f'broken {value}')\n```\n"
    )
    assert message.startswith("example.md:5: the Python example failed")
    assert 'File "example.md", line 7' in message
    assert "ValueError: broken 1" in message


def test_top_level_await_fails() -> None:
    message = _failure("```python\nimport asyncio\nawait asyncio.sleep(0)\n```\n")
    assert message.startswith("example.md:1:")
    assert "SyntaxError" in message
    assert "line 3" in message


def test_a_continued_block_runs_in_the_same_script_and_its_failure_names_it() -> None:
    ok = "```python\nx = 2\n```\n\n<!-- docs-test: continue -->\n```python\nassert x == 2\n```\n"
    document = _document(ok)
    assert [len(e.blocks) for e in document.examples] == [2]
    run_example(document.examples[0])
    message = _failure(ok.replace("x == 2", "x == 3"))
    assert message.startswith("example.md:6: the Python example failed")
    assert 'File "example.md", line 7' in message


def test_a_wrong_documented_output_fails_naming_both_blocks() -> None:
    text = (
        "```python\nprint('hello')\nprint('world')\n```\n\n"
        "<!-- docs-test: output -->\n```text\nhello\nplanet\n```\n"
    )
    message = _failure(text)
    assert message.startswith("example.md:7 (output of example.md:1): the documented output")
    assert "-planet" in message
    assert "+world" in message


def test_the_output_of_each_block_of_a_chain_is_its_own() -> None:
    text = (
        "```python\nprint('one')\n```\n"
        "<!-- docs-test: output -->\n```text\none\n```\n"
        "<!-- docs-test: continue -->\n```python\nprint('two')\nprint('three')\n```\n"
        "<!-- docs-test: output -->\n```text\ntwo\n...\n```\n"
    )
    document = _document(text)
    assert not document.problems
    run_example(document.examples[0])


def test_a_wrong_output_shown_after_a_prompt_fails() -> None:
    text = "Text.\n\n```console\n$ echo hello\nhello\n$ echo world\nplanet\n```\n"
    message = _failure(text)
    assert message.startswith("example.md:6: the documented output does not match")
    run_example(_document(text.replace("planet", "world")).examples[0])


def test_a_failing_command_fails_unless_its_status_is_documented() -> None:
    text = "```sh\ntrue\nfalse   # fails\necho never\n```\n"
    message = _failure(text)
    assert message.startswith("example.md:3: `false   # fails` exited with 1, not 0")
    run_example(
        _document("<!-- docs-test: exit=1 -->\n" + text.replace("echo never\n", "")).examples[0]
    )


def test_a_policy_that_does_not_load_fails_naming_its_block() -> None:
    policy = (
        "Text.\n\n```yaml\nversion: 1\nproviders:\n  mini: {type: openai, api_key: x}\n"
        "tasks:\n  default: {chain: [mini, sonet]}\n```\n"
    )
    message = _failure(policy)
    assert message.startswith("example.md:3: the policy does not load")
    assert "provider 'sonet' is not defined" in message
    marked = policy.replace(
        "```yaml", "<!-- docs-test: policy-error: 'sonet' is not defined -->\n```yaml"
    )
    run_example(_document(marked).examples[0])
    wrong = marked.replace("'sonet' is not defined", "unknown key")
    assert "but not with 'unknown key'" in _failure(wrong)


def test_yaml_json_and_toml_must_parse() -> None:
    assert _failure("```yaml\na: [1\n```\n").startswith("example.md:")
    assert _failure('Text.\n\n```json\n{"a": 1,\n "b": }\n```\n').startswith(
        "example.md:5: not JSON"
    )
    assert _failure("```toml\n[a\n```\n").startswith("example.md:1: not TOML")


def test_a_skip_needs_a_reason() -> None:
    document = _document("Text.\n\n<!-- docs-test: skip -->\n```sh\nrm -rf /\n```\n")
    assert document.problems == [f"example.md:4: {NO_REASON}"]
    assert [e.kind for e in document.examples] == ["skip"]  # still not run
    reasoned = _document(
        "<!-- docs-test: skip: needs a cluster -->\n```sh\nkubectl get pods\n```\n"
    )
    assert not reasoned.problems
    assert [e.kind for e in reasoned.examples] == ["skip"]


def test_unmarked_blocks_and_stray_or_unknown_markers_are_problems() -> None:
    document = _document(
        "```\nplain\n```\n\n<!-- docs-test: continue -->\n\n```dockerfile\nFROM x\n```\n"
        "<!-- docs-test: everything -->\n```json\n{}\n```\n"
    )
    assert document.problems == [
        "example.md:1: a ```(no language) block needs a marker: `<!-- docs-test: output -->` "
        "or `<!-- docs-test: skip: REASON -->`",
        "example.md:5: a docs-test marker that is not right before a code block",
        "example.md:7: a ```dockerfile block needs a marker: `<!-- docs-test: output -->` "
        "or `<!-- docs-test: skip: REASON -->`",
        "example.md:11: unknown docs-test marker 'everything'",
    ]


def test_output_matching() -> None:
    assert output_matches(["a", "...", "d"], ["a", "b", "c", "d", ""])
    assert output_matches(["a", "...", "b"], ["a", "b"])
    assert output_matches(['{"id":"...","ok":true}'], ['{"id":"x1","ok":true}   '])
    assert not output_matches(["a", "b"], ["a", "b", "c"])
    assert not output_matches(["a", "...", "d"], ["a", "b", "c"])
    assert not output_matches(["a"], ["ab"])


def test_fake_upstreams_serve_an_example_written_for_the_real_vendors() -> None:
    text = (
        "<!-- docs-test: fake-upstreams -->\n```python\n"
        "from openai import OpenAI\n\n"
        "with OpenAI() as client:  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment\n"
        "    reply = client.chat.completions.create(\n"
        "        model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'Hi'}]\n"
        "    )\n"
        "print(reply.choices[0].message.content)\n```\n"
        "<!-- docs-test: output -->\n```text\nHello from gpt-4o-mini. This is a fake reply.\n```\n"
    )
    document = _document(text)
    assert not document.problems
    run_example(document.examples[0])


def test_examples_run_without_real_keys() -> None:
    environ = {
        "OPENAI_API_KEY": "sk-real",
        "GATEWAY_API_KEYS": "k",
        "OLLAMA_BASE_URL": "x",
        "HOME": "/h",
    }
    cleaned = clean_environ(environ)
    assert not {"OPENAI_API_KEY", "GATEWAY_API_KEYS", "OLLAMA_BASE_URL"} & set(cleaned)
    assert cleaned["HOME"] == "/h"
    assert cleaned["PATH"].split(os.pathsep)[0] == str(VENV_BIN)


def test_an_example_that_leaves_a_client_open_fails() -> None:
    leaky = (
        "```python\nimport asyncio\n\nimport aiohttp\n\n\n"
        "async def main() -> None:\n    session = aiohttp.ClientSession()\n\n\n"
        "asyncio.run(main())\n```\n"
    )
    message = _failure(leaky)
    assert message.startswith("example.md:1: the example leaves a client open")
    closed = leaky.replace(
        "session = aiohttp.ClientSession()", "await aiohttp.ClientSession().close()"
    )
    run_example(_document(closed).examples[0])
