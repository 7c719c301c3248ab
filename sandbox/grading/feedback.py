"""What a failure says, for the teacher (JUnit's failure body) and for the student (one Markdown
file per submission, ``--feedback DIR``).

The pieces come from two places. The trusted pytest process gives the assertion message with
pytest's explanation (every line of it, not just the first) and the teacher's errors with their
file and line. The box gives the student's exception (its type, message and traceback as
*text*) and what the student's programs printed: both are untrusted strings, bounded here and
shown as text (in Markdown, inside fences longer than any run of backticks they hold).
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any

MAX_STUDENT = 8 * 1024  # a traceback or a program's output, per test


def failure_text(report: Any, limit: int) -> tuple[str, str]:
    """(message, failure body) of a failed report: the exception's whole text as pytest shows
    it (an assertion's explanation included), and pytest's full failure report."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    text = text.strip().removeprefix("sandbox.grading.submission.SubmissionError: ")  # the student's own
    return text[:limit], str(getattr(report, "longreprtext", "") or text)[-limit:]


def student_error(exc: Any) -> dict[str, str]:
    return {"type": str(exc.type_name)[:200], "message": str(exc)[:MAX_STUDENT],
            "traceback": str(exc.traceback_text)[-MAX_STUDENT:]}


def teacher_error(excinfo: Any, what: str) -> dict[str, str]:
    """The teacher's own mistake, placed: ``file:line: SyntaxError: ...`` and the full text."""
    exc = excinfo.value
    cause = exc.__cause__ or exc  # pytest wraps an import's error in a CollectError
    where = ""
    if isinstance(cause, SyntaxError) and cause.filename:
        where = f"{cause.filename}:{cause.lineno}"
    else:
        frames = traceback.extract_tb(cause.__traceback__)
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
    error = traceback.format_exception_only(type(cause), cause)[-1].strip()
    if type(cause).__name__ == "CollectError":  # a plain collection failure: its text says it
        lines = [ln for ln in str(cause).splitlines() if ln.strip()]
        error = lines[-1].strip().removeprefix("E").strip() if lines else "collection error"
    return {"what": what, "where": where, "error": error[:2000], "text": _teacher_text(cause)[-8000:]}


def _teacher_text(cause: BaseException) -> str:
    """The error as the teacher wants to read it: their own frames (none of pytest's, of
    importlib's), then the error itself — a SyntaxError with its line and caret."""
    if isinstance(cause, SyntaxError) or type(cause).__name__ == "CollectError":
        return "".join(traceback.format_exception_only(type(cause), cause))
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if "/_pytest/" not in f.filename and "/pluggy/" not in f.filename
              and not f.filename.startswith("<frozen") and "/importlib/" not in f.filename]
    return "".join(traceback.format_list(frames) + traceback.format_exception_only(type(cause), cause))


def _fence(text: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}text\n{text.rstrip()}\n{ticks}\n"


def _test_name(t: dict[str, Any]) -> str:
    nodeid = str(t.get("nodeid", "?"))
    name = nodeid.split("::", 1)[-1]
    sub = str(t.get("submission", ""))
    return name.replace(f"[{sub}]", "").replace(f"-{sub}]", "]").replace(f"[{sub}-", "[")


def verdict_text(t: dict[str, Any]) -> str:
    """``passed``, ``failed``, or the box's verdict with its numbers (``wall time 1s exceeded``)."""
    verdicts = [str(v) for v in t.get("verdicts") or []]
    student = t.get("student") or {}
    if student.get("type") == "CompileError":
        verdicts.append("CE: your code did not compile")
    elif student.get("type"):
        verdicts.append(f"your code raised {student['type']}")
    if t.get("outcome") == "passed":
        return "passed"
    why = "; ".join(dict.fromkeys(verdicts))
    return f"{t.get('outcome', 'failed')}" + (f" ({why})" if why else "")


def markdown(row: dict[str, Any]) -> str:
    """A student's feedback: the score, then each test (hidden ones: pass/fail and points)."""
    out = [f"# {row['name']}: {row['score']:g}/{row['max_score']:g} points\n",
           f"{row['passed']} of {row['total']} tests passed.\n"]
    if row.get("error"):
        out.append(f"\n**Not fully graded:** {row['error']}\n")
    for t in row["tests"]:
        mark = "✓" if t.get("outcome") == "passed" else "✗"
        out.append(f"\n## {mark} {_test_name(t)} — {float(t.get('earned', 0)):g}/"
                   f"{float(t.get('points', 1)):g} points\n")
        if t.get("hidden"):
            out.append("\n(hidden test: details are not shown)\n")
            continue
        out.append(f"\nVerdict: {verdict_text(t)}\n")
        if t.get("outcome") == "passed":
            continue
        if t.get("message"):
            out.append("\nWhat went wrong:\n\n" + _fence(str(t["message"])))
        student = t.get("student") or {}
        if student.get("traceback"):
            out.append("\nYour code raised:\n\n" + _fence(str(student["traceback"])))
        for o in t.get("output") or []:
            prog = f"\nYour program `{' '.join(map(str, o.get('argv', [])))[:200].replace('`', '')}`"
            if not (o.get("stdout") or o.get("stderr")):
                out.append(f"{prog} printed nothing.\n")
                continue
            out.append(f"{prog} printed:\n\n")
            for stream in ("stdout", "stderr"):
                if o.get(stream):
                    out.append(f"{stream}:\n\n" + _fence(str(o[stream])))
    return "".join(out)


def write_feedback(rows: list[dict[str, Any]], folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for row in rows:
        name = str(row["name"]).replace("/", "_")
        with open(os.path.join(folder, f"{name}.md"), "w") as f:
            f.write(markdown(row))
