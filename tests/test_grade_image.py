"""`sandbox grade --image NAME`: every submission's box has a stored image as its root (here a
busybox image built with tarfile alone); an unknown image is a usage error before grading."""

from __future__ import annotations

from pathlib import Path

import pytest
from grade_course import grade, make_course, rows, summary
from image_build import base_layer, oci_layout

from sandbox import ImageStore

TESTS = '''
def test_root_is_the_image(submission):
    r = submission.run(["cat", "/etc/os-release"])
    assert r.stdout == b"NAME=testimage\\n"

def test_script(submission):
    r = submission.run(["sh", "main.sh"], stdin=b"hi\\n")
    assert r.stdout == b"got hi\\n"

def test_no_host_python(submission):
    assert submission.run(["sh", "-c", "ls /usr/bin/python3"]).exit_code != 0
'''


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    root = tmp_path / "store"
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(root))
    ImageStore(str(root)).import_archive(oci_layout(str(tmp_path / "oci"), [base_layer()]))
    return "test/busybox:1"


def test_grade_on_an_image(tmp_path: Path, store: str, no_leftovers) -> None:
    course = make_course(tmp_path / "c", {"test_img.py": TESTS}, {
        "good": {"main.sh": "read x\necho got $x\n"}, "bad": {"main.sh": "echo nope\n"}})
    p = grade(course, "--image", store)
    assert p.returncode == 0, p.stdout + p.stderr
    assert {n: s[:4] for n, s in summary(course).items()} == {"good": (3.0, 3.0, 3, 3), "bad": (2.0, 3.0, 2, 3)}
    p = grade(course)  # the same course on the host's /usr: no /etc/os-release of the image
    assert rows(course)["good"]["score"] == 1.0, p.stdout + p.stderr


def test_an_unknown_image_is_a_usage_error(tmp_path: Path, store: str) -> None:
    course = make_course(tmp_path / "c", {"test_img.py": TESTS}, {"good": {"main.sh": "echo\n"}})
    p = grade(course, "--image", "no/such:1")
    assert p.returncode == 2 and "no/such" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (course / "results.json").exists()
