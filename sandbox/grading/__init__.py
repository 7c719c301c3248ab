"""Grading untrusted submissions with a trusted pytest suite (``sandbox grade``).

No untrusted code ever runs in the process that decides pass/fail: the teacher's tests run in
a normal pytest process; every use of the submission (``import_module`` proxies, ``run``) goes
to a fresh box, and only tagged JSON comes back. See docs/grading.md.
"""
