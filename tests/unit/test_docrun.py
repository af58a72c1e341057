"""The doc runner itself: it must fail when a page's output differs, or the docs tests could never fail."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.docrun import DocFailure, matches, parse, run_page


def run(tmp_path: Path, text: str):
    page_file = tmp_path / "page.md"
    page_file.write_text(text)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return run_page(parse(page_file), work, env, sys.executable)


def test_matching_with_ellipses():
    assert matches(["trained sales:1 in ...s"], ["trained sales:1 in 4.4s  "])
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert matches(["a", "...", "z"], ["a", "z"])
    assert not matches(["a", "z"], ["a", "b", "z"])
    assert not matches(["wrote 210 rows"], ["wrote 450 rows"])
    assert not matches([], ["something printed"])
    assert matches(["{...}"], ['{"a": 1}']) and not matches(["{...}"], ["[1]"])


def test_a_page_that_prints_what_it_shows_passes(tmp_path):
    result = run(
        tmp_path,
        """# A page
```console
$ echo hello \\
    world
hello world
$ export GREETING=hi; mkdir sub && cd sub
$ echo "$GREETING from $(basename "$PWD")"
hi from sub
$ false
$ echo $?
1
$ sh -c "echo 'error: it failed' >&2; exit 3"
error: it failed
```

```bash
# comments are not commands
test "$GREETING" = hi
cat > note.txt <<'EOF'
a here-document is one command

with its blank line
EOF
test "$(wc -l < note.txt)" -eq 3
```

```python
import os
assert os.path.basename(os.getcwd()) == "sub"
```
""",
    )
    assert result.ran == 10 and result.skipped == []


@pytest.mark.parametrize(
    ("block", "why"),
    [
        ("```console\n$ echo 450\n210\n```", "the page shows:\n210\nbut it printed:\n450"),
        ("```console\n$ sh -c 'exit 4'\n```", "exited 4"),
        ("```bash\ntrue\nfalse\n```", "page.md:4: $ false\nexited 1"),
        ("```python\nraise SystemExit('boom')\n```", "boom"),
        ("<!-- doc: timeout=1 -->\n```bash\nsleep 5\n```", "no answer within 1 s"),
    ],
)
def test_a_page_that_differs_fails_naming_the_line(tmp_path, block, why):
    with pytest.raises(DocFailure) as err:
        run(tmp_path, "# Page\n" + block + "\n")
    assert why in str(err.value)


def test_skip_background_setup_and_cleanup(tmp_path):
    marker = tmp_path / "cleaned"
    result = run(
        tmp_path,
        f"""<!-- doc: setup
echo 'hidden' > made-by-setup.txt
-->
<!-- doc: cleanup
touch {marker}
-->
<!-- doc: skip: needs a cloud account -->
```bash
gcloud run deploy
```

<!-- doc: background wait=http://127.0.0.1:{_free_port()}/ -->
```console
$ echo serving; exec {sys.executable} -m http.server --bind 127.0.0.1 {_last_port}
serving
```

```console
$ cat made-by-setup.txt
hidden
```
""",
    )
    assert result.skipped == ["page.md:8: needs a cloud account"]
    assert marker.exists()


_last_port = 0


def _free_port() -> int:
    global _last_port
    from tests.conftest import free_port

    _last_port = free_port()
    return _last_port


def test_cleanup_runs_after_a_failure_and_background_processes_stop(tmp_path):
    marker = tmp_path / "cleaned"
    pidfile = tmp_path / "pid"
    with pytest.raises(DocFailure):
        run(
            tmp_path,
            f"""<!-- doc: cleanup
touch {marker}
-->
<!-- doc: background -->
```bash
echo $BASHPID > {pidfile}; exec sleep 600
```

```bash
while [ ! -s {pidfile} ]; do sleep 0.05; done
false
```
""",
        )
    assert marker.exists()
    assert not _running(int(pidfile.read_text()))


def _running(pid: int) -> bool:
    """Alive and not a zombie (the killed server's new parent, PID 1 here, reaps it in its own time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_already_answering_where_the_page_starts_its_own_fails_the_page(tmp_path):
    """Else the page would test whatever runs there (a developer's own `make demo` on 8080)."""
    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with pytest.raises(DocFailure, match="already answers before the page starts its server"):
            run(tmp_path, f"<!-- doc: background wait={url} -->\n```bash\nsleep 60\n```\n")
    finally:
        httpd.shutdown()


def test_a_python_block_prints_what_its_output_block_shows(tmp_path):
    page = """# A page
```python
print("answer:", 6 * 7)
print("and more")
```

```output
answer: 42
...
```
"""
    assert run(tmp_path, page).ran == 1
    with pytest.raises(DocFailure, match="answer: 41"):
        run(tmp_path, page.replace("answer: 42", "answer: 41"))
    with pytest.raises(DocFailure, match="must follow a ```python block"):
        run(tmp_path, "# A page\n```output\nanswer: 42\n```\n")
