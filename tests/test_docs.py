"""The documentation is executable, so it cannot drift away from the code.

* Every fenced ```` ```python ```` block of ``docs/*.md`` runs. A page's blocks run in order, in one fresh
  ``__main__`` module of their own subprocess (so a page may build on its earlier blocks, classes defined in
  the docs resolve like a script's, and ``set_default_cache``/"first cache created" state never leaks from
  one page to another). Async examples are written with ``asyncio.run(...)`` like real scripts.
* A block is *not* run when its fence carries a ``title="..."`` (a file excerpt shown for reading), or when
  the line before its fence is an HTML comment starting with ``<!-- skip`` (``<!-- skip: needs memcached
  -->``). Keep those rare: a block that does not run can rot.
* A page whose runnable blocks use a local Redis (``redis://127.0.0.1:6379/...``) needs Redis, one using a
  ``postgresql`` URL needs PostgreSQL: with ``CI`` set a missing server fails the test, elsewhere it skips
  with the reason (the ``redis_url``/``postgres_url`` fixtures of ``conftest.py``). Redis examples use
  database 15 and a ``key_prefix`` of their own; the keys under those prefixes are removed before and after
  the page runs. Blocks run with the working directory in a temporary directory and no ``YOKEDCACHE_*``
  variables set.
* Reference tables are checked against the code: every ``CacheConfig`` field (type-independent facts:
  default, environment variable), every ``@cached`` and ``HTTPCacheMiddleware`` option, every CLI command.
* Every ``yokedcache.yaml`` example validates with ``CacheConfig.from_yaml``.
* ``mkdocs build --strict`` passes (broken links, anchors, API reference entries and unlisted pages fail it).
"""

from __future__ import annotations

import ast
import contextlib
import enum
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PAGE_TIMEOUT = 60  # seconds for all the blocks of one page

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip\b", re.IGNORECASE)
_PREFIX = re.compile(r"""key_prefix\s*=\s*["']([^"'\s]+)["']""")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the first code line in the page
    language: str
    info: str
    code: str
    skipped: bool

    @property
    def runnable(self) -> bool:
        return self.language in ("python", "py") and not self.skipped and "title=" not in self.info


def extract_blocks(text: str, page: str = "<page>") -> list[Block]:
    """All fenced code blocks of a Markdown text, dedented to their fence's indentation."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        language = info.split()[0].lower() if info else ""
        language = language.lstrip(".").split("{")[0]
        blocks.append(
            Block(
                page=page,
                line=index + 2,
                language=language,
                info=info,
                code="\n".join(body) + "\n",
                skipped=bool(_SKIP.match(previous)),
            )
        )
        index = end + 1
    return blocks


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _runnable(page: Path) -> list[Block]:
    return [b for b in extract_blocks(page.read_text(encoding="utf-8"), str(page)) if b.runnable]


# The runner: blocks arrive as JSON on stdin and run in one fresh ``__main__`` module, each compiled
# against its page and line so a traceback points into the Markdown file.
_RUNNER = textwrap.dedent(
    """
    import json, sys, types
    blocks = json.load(sys.stdin)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = module
    for block in blocks:
        print(f"--- {block['page']}:{block['line']}", flush=True)
        source = "\\n" * (block["line"] - 1) + block["code"]
        exec(compile(source, block["page"], "exec"), module.__dict__)
    """
)


def _clean_redis(url: str, prefixes: set[str]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@contextlib.contextmanager
def _redis_page_lock(url: str | None) -> Iterator[None]:
    """The docs use fixed key prefixes: two test runs sharing one Redis take turns on those pages."""
    if url is None:
        yield
        return
    import redis

    client = redis.Redis.from_url(url)
    lock = client.lock(
        "yokedcache-docs-tests:lock", timeout=PAGE_TIMEOUT * 2, blocking_timeout=PAGE_TIMEOUT * 2
    )
    if not lock.acquire():
        pytest.fail("another test run held the docs' Redis lock for too long")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            lock.release()
        client.close()


RUNNABLE_PAGES = [page for page in _pages() if _runnable(page)]


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[p.name for p in RUNNABLE_PAGES])
def test_page_code_runs(page: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    blocks = _runnable(page)
    code = "\n".join(b.code for b in blocks)
    redis_url = None
    if re.search(r"redis://(127\.0\.0\.1|localhost):6379", code):
        redis_url = request.getfixturevalue("redis_url")
    if re.search(r"postgresql(\+\w+)?://", code):
        request.getfixturevalue("postgres_url")
    prefixes = set(_PREFIX.findall(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_")}
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    payload = [{"page": str(b.page), "line": b.line, "code": b.code} for b in blocks]
    with _redis_page_lock(redis_url):
        if redis_url is not None:
            _clean_redis(redis_url, prefixes)
        try:
            result = subprocess.run(
                [sys.executable, "-c", _RUNNER],
                input=json.dumps(payload),
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=env,
                timeout=PAGE_TIMEOUT,
            )
        finally:
            if redis_url is not None:
                _clean_redis(redis_url, prefixes)
    assert result.returncode == 0, (
        f"a code block of {page.name} failed\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


# --- the extractor itself ------------------------------------------------------------------------------


def test_markers_decide_what_runs() -> None:
    text = textwrap.dedent(
        """\
        ```python
        a = 1
        ```

        <!-- skip: needs a server -->
        ```python
        b = 2
        ```

        ```python title="models.py"
        c = 3
        ```

        === "Tab"

            ```python
            d = 4
            ```

        ```bash
        echo no
        ```
        """
    )
    blocks = extract_blocks(text)
    assert [(b.code.strip(), b.runnable) for b in blocks] == [
        ("a = 1", True),
        ("b = 2", False),
        ("c = 3", False),
        ("d = 4", True),
        ("echo no", False),
    ]
    assert blocks[0].line == 2 and blocks[3].line == 17


def test_every_block_parses() -> None:
    """Even blocks that do not run must at least be valid Python."""
    for page in _pages():
        for block in extract_blocks(page.read_text(encoding="utf-8"), page.name):
            if block.language in ("python", "py"):
                try:
                    ast.parse(block.code)
                except SyntaxError as exc:
                    pytest.fail(f"{page.name}:{block.line}: invalid Python: {exc}")


# --- reference tables against the code -----------------------------------------------------------------


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the first table after ``heading`` (a Markdown heading line), header row excluded."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == heading)
    rows: list[list[str]] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif in_table:
            break
    return rows[1:]


def _code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_configuration_table_lists_every_field() -> None:
    from yokedcache import config as config_module

    rows = _table_rows((DOCS / "configuration.md").read_text(encoding="utf-8"), "All fields")
    documented = {}
    for cells in rows:
        names = _code_names(cells[0])
        assert names, f"configuration.md row without a field name: {cells}"
        documented[names[0]] = cells
    assert list(documented) == list(config_module.FIELD_NAMES), "rows must follow the declaration order"
    specs = {spec.name: spec for spec in config_module._FIELDS}
    for name, cells in documented.items():
        env_cell = cells[3]
        if name in config_module.ENV_FIELD_NAMES:
            assert f"`{config_module.env_var_name(name)}`" in env_cell, f"{name}: environment variable"
        else:
            assert env_cell == "—", f"{name} has no environment variable"
        default = specs[name].default()
        shown = cells[2]
        if isinstance(default, (dict, list)):
            expected = "`{}`" if isinstance(default, dict) else "`[]`"
        elif default is None:
            expected = "`None`"
        elif isinstance(default, enum.Enum):
            expected = f"`{default.name}`"
        elif isinstance(default, str):
            expected = f'`"{default}"`'
        else:
            expected = f"`{default!r}`"
        assert shown == expected, f"{name}: default shown as {shown}, the code says {expected}"


def test_cached_options_are_documented() -> None:
    from yokedcache.integrations.decorators import cached

    rows = _table_rows((DOCS / "decorators.md").read_text(encoding="utf-8"), "Options")
    documented = {_code_names(cells[0])[0] for cells in rows}
    parameters = set(inspect.signature(cached).parameters) - {"func"}
    assert parameters <= documented, f"undocumented @cached options: {sorted(parameters - documented)}"


def test_middleware_options_are_documented() -> None:
    from yokedcache.middleware import HTTPCacheMiddleware

    rows = _table_rows((DOCS / "http.md").read_text(encoding="utf-8"), "Options")
    documented = {_code_names(cells[0])[0] for cells in rows}
    parameters = set(inspect.signature(HTTPCacheMiddleware).parameters) - {"app"}
    assert parameters <= documented, f"undocumented middleware options: {sorted(parameters - documented)}"


def test_cli_commands_are_documented() -> None:
    try:
        from yokedcache.cli import cli
    except ImportError as exc:
        pytest.skip(f"the CLI is not importable: {exc}")
    commands = getattr(cli, "commands", {})
    if not commands:
        pytest.skip("the CLI has no commands yet")
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `([a-z-]+)`\n(.*?)(?=^##)", text + "\n##", re.MULTILINE | re.DOTALL))
    missing = sorted(set(commands) - set(sections))
    assert not missing, f"CLI commands without a section in cli.md: {missing}"
    global_options = {opt for param in cli.params for opt in getattr(param, "opts", [])}
    for name, command in commands.items():
        options = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
        documented = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", sections[name]))
        assert options <= documented, f"cli.md, {name}: undocumented options {sorted(options - documented)}"
        unknown = documented - options - global_options - {"--help"}
        assert not unknown, f"cli.md, {name}: documents options the command lacks: {sorted(unknown)}"


def test_yaml_config_examples_validate(tmp_path: Path) -> None:
    from yokedcache import CacheConfig

    checked = 0
    for page in _pages():
        for block in extract_blocks(page.read_text(encoding="utf-8"), page.name):
            if block.language in ("yaml", "yml") and 'title="yokedcache.yaml"' in block.info:
                path = tmp_path / f"{page.stem}-{block.line}.yaml"
                path.write_text(block.code, encoding="utf-8")
                CacheConfig.from_yaml(path)
                checked += 1
    assert checked, "configuration.md should show at least one yokedcache.yaml"


# --- the site builds -----------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        reason = "mkdocs, mkdocs-material and mkdocstrings[python] are not installed"
        if IN_CI:
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed\n{result.stdout}\n{result.stderr}"
