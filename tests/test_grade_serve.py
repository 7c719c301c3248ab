"""``submission.serve``: a course whose submissions are web servers (issue 18: "a grading course
with a server submission"). Each server runs in a box and network of its own; the teacher's
test talks to it over ``server.url`` with urllib. A server that works, one that answers wrong,
one that crashes at start (its verdict is the test's) and one that never listens (the test
fails, naming the port) are graded by a real ``sandbox grade`` run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from grade_course import grade, make_course, rows, summary

TESTS = '''
import json, urllib.request

def test_add_endpoint(submission):
    server = submission.serve(["python3", "server.py"], port=8000, ready_timeout=5)
    with urllib.request.urlopen(server.url + "add?a=2&b=3", timeout=5) as r:
        assert json.load(r) == {"sum": 5}

def test_two_requests_one_server(submission):
    server = submission.serve(["python3", "server.py"], port=8000, ready_timeout=5)
    for a in (1, 10):
        with urllib.request.urlopen(f"{server.url}add?a={a}&b=1", timeout=5) as r:
            assert json.load(r) == {"sum": a + 1}
    assert server.running
'''

SERVER = '''
import json, http.server, urllib.parse

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        body = json.dumps({"sum": int(q["a"][0]) + int(q["b"][0]) + OFFSET}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
'''


@pytest.fixture
def top() -> Iterator[Path]:
    """Not pytest's tmp_path: as root, /tmp/pytest-of-root is 0700, and a box on a network is
    made by the network's hub, an unprivileged uid that must walk to the submission."""
    d = tempfile.mkdtemp(prefix="sbx-serve-")
    os.chmod(d, 0o711)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_grade_a_course_of_servers(top: Path, no_leftovers) -> None:
    course = make_course(top / "c", {"test_web.py": TESTS}, {
        "good": {"server.py": "OFFSET = 0\n" + SERVER},
        "wrong": {"server.py": "OFFSET = 1\n" + SERVER},
        "crash": {"server.py": "raise SystemExit('no port for you')\n"},
        "silent": {"server.py": "import time\ntime.sleep(60)\n"}})
    p = grade(course)
    assert p.returncode == 0, p.stdout + p.stderr
    got = {n: s[:5] for n, s in summary(course).items()}
    assert got["good"] == (2.0, 2.0, 2, 2, "OK"), (got, p.stdout)
    assert got["wrong"][:4] == (0.0, 2.0, 0, 2), got
    assert got["crash"][:5] == (0.0, 2.0, 0, 2, "RE"), got
    assert got["silent"][:4] == (0.0, 2.0, 0, 2), got
    r = rows(course)
    crash = " ".join(t.get("message", "") + t.get("longrepr", "") for t in r["crash"]["tests"])
    silent = " ".join(t.get("message", "") + t.get("longrepr", "") for t in r["silent"]["tests"])
    assert "before it listened on port 8000" in crash and "no port for you" in crash, r["crash"]["tests"]
    assert "did not listen on port 8000 within 5s" in silent, r["silent"]["tests"]
