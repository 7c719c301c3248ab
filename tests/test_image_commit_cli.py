"""``sandbox run --commit NAME --image BASE -- CMD`` (``sandbox/_cli_commit.py``): an OK run's
writable layer becomes a new image on BASE (a file it wrote is there, a file it deleted stays
deleted); a failed run commits nothing; bad uses are one-line usage errors."""

from __future__ import annotations

import os

import pytest

import sandbox
from tests.test_images import cli, image, layers  # noqa: F401  (fixtures)


def test_run_commit_then_run_on_the_new_image(image):  # noqa: F811
    st = os.environ["SANDBOX_IMAGE_STORE"]
    r = cli("run", "--image", "test/busybox:1", "--commit", "test/setup:1", "--",
            "sh", "-c", "echo built > /built; rm /new; echo out", env_store=st)
    assert (r.returncode, r.stdout) == (0, "out\n"), r.stderr
    assert r.stderr.endswith("sandbox: committed test/setup:1\n")
    store = sandbox.ImageStore()
    rec = store.get("test/setup:1")
    assert rec["layers"][:-1] == store.get("test/busybox:1")["layers"]
    r = cli("run", "--image", "test/setup:1", "--", "sh", "-c", "cat /built; cat /new", env_store=st)
    assert r.returncode == 1 and r.stdout == "built\n", r.stderr
    assert "'/new': No such file" in r.stderr  # deleted in the committed layer: still deleted
    r = cli("run", "--image", "test/setup:1", env_store=st)  # the base's Cmd and WorkingDir kept
    assert (r.returncode, r.stdout) == (0, "cmd ran in /opaque\n"), r.stderr


@pytest.mark.parametrize(("script", "status", "code"), [("echo half > /half; exit 3", "RE", 3)])
def test_a_failed_run_commits_nothing(image, script, status, code):  # noqa: F811
    st = os.environ["SANDBOX_IMAGE_STORE"]
    r = cli("run", "--image", "test/busybox:1", "--commit", "test/broken:1", "--", "sh", "-c", script,
            env_store=st)
    assert r.returncode == code
    assert f"sandbox: --commit test/broken:1: not committed: the command ended {status}" in r.stderr
    with pytest.raises(sandbox.ImageError, match="no image"):
        sandbox.ImageStore().get("test/broken:1")


def test_a_timed_out_run_commits_nothing(image):  # noqa: F811
    st = os.environ["SANDBOX_IMAGE_STORE"]
    r = cli("run", "--image", "test/busybox:1", "--wall-time", "1s", "--commit", "test/slow:1", "--",
            "sh", "-c", "touch /x; sleep 30", env_store=st)
    assert r.returncode == 124 and "not committed: the command ended TO" in r.stderr
    with pytest.raises(sandbox.ImageError, match="no image"):
        sandbox.ImageStore().get("test/slow:1")


@pytest.mark.parametrize(("args", "message"), [
    (["--commit", "x:1", "--", "true"], "--commit 'x:1': needs --image BASE"),
    (["--image", "test/busybox:1", "--commit", "Bad Name", "--", "true"], "--commit: image name 'Bad Name'"),
    (["--image", "test/busybox:1", "--commit", "x:1", "-t", "--", "true"], "--commit: the command runs without a terminal"),
])
def test_bad_commit_uses_are_one_line_usage_errors(image, args, message):  # noqa: F811
    r = cli("run", *args, env_store=os.environ["SANDBOX_IMAGE_STORE"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
