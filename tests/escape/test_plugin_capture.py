"""A ``@pytest.mark.sandboxed`` test's captured output never reaches a host file.

pytest captures fd 1 and 2 into temporary files on the host's /tmp. Handing those files to the
box (as the plugin once did) let a test write past the output cap into host disk, up to the
file-size limit, and hold a host file open for writing. The box now writes into memfd spools
in their place; what is left in a spool is copied to pytest's file within the output cap.
"""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]


def test_captured_output_goes_to_a_spool_not_a_host_file(pytester):
    pytester.makepyfile(test_it=textwrap.dedent("""
        import os, pytest

        @pytest.mark.sandboxed(output_limit="1M")
        def test_flood():
            print("fd1 is", os.readlink("/proc/self/fd/1"), "fd2 is", os.readlink("/proc/self/fd/2"))
            assert 0, "show the capture"
        """))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:pytest_isolate")
    out = r.stdout.str()
    assert "fd1 is /memfd:sandbox-capture (deleted) fd2 is /memfd:sandbox-capture (deleted)" in out, out[-3000:]
