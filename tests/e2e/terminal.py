"""A command run on a pseudo-terminal and stopped with Ctrl-C, as a user at a shell would."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def _interactive() -> None:
    """As a shell starts a foreground job: SIGINT at its default (a test run in the
    background of a non-interactive shell inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read(fd: int, until: float) -> bytes:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def ctrl_c_once(argv: list[str], committed: Path, *, cwd: Path, env: dict[str, str],
                wait_s: float, settle_s: float, exit_s: float) -> tuple[int, str]:
    """Run ``argv`` on a terminal; once ``committed`` exists (and ``settle_s`` later), press
    Ctrl-C: SIGINT to the whole foreground process group, as the terminal does. Returns the
    exit status and what the terminal showed, colour and cursor codes removed."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(argv, stdin=sub, stdout=sub, stderr=sub, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=_interactive)
    os.close(sub)
    out = b""
    deadline = time.monotonic() + wait_s
    while not committed.exists() and time.monotonic() < deadline and proc.poll() is None:
        out += _read(main, time.monotonic() + 0.2)
    assert committed.exists(), out.decode(errors="replace")[-3000:]
    time.sleep(settle_s)
    os.killpg(proc.pid, signal.SIGINT)
    out += _read(main, time.monotonic() + 30)
    rc = proc.wait(timeout=exit_s)
    os.close(main)
    return rc, _ESCAPES.sub("", out.decode(errors="replace"))
