"""Helpers shared by the test modules (imported by name: pytest puts this directory on sys.path)."""
from __future__ import annotations

from fixres.cli import main

# The tiny run most modules share (conftest.trained_run): test_resnet at 32 px, evaluated at 40 px.
TRAIN_RES, EVAL_RES = 32, 40


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``fixres ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert the CLI's contract for bad input: exit code 2 and ONE line on stderr, no
    traceback, holding every needle. Returns the line."""
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def cli_error(capsys, *argv_and_needles, needles=()) -> str:
    """Run ``fixres ARGV`` and assert it fails with one line holding ``needles``."""
    code, _, err = run_cli(capsys, *argv_and_needles)
    return one_line_error(code, err, *needles)
