"""Run the engine (`<python> -m mskai ...`) in a background process: start, progress, cancel.

The one launcher of both Slicer modules (they poll it from a ``qt.QTimer``) and of anything else that wants the
engine out of process. Pure Python: no Slicer or Qt here.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from mskai import MskaiError
from mskai.protocol import ERROR_PREFIX


def python_executable() -> str:
    """The interpreter that runs the engine: $MSKAI_PYTHON, else PythonSlicer inside 3D Slicer, else sys.executable."""
    if os.environ.get("MSKAI_PYTHON"):
        found = shutil.which(os.environ["MSKAI_PYTHON"])
        if not found:
            raise MskaiError(f"MSKAI_PYTHON={os.environ['MSKAI_PYTHON']} is not an executable program")
        return found
    exe = Path(sys.executable or "")
    if not exe.name.lower().startswith("slicer"):
        if not sys.executable:
            raise MskaiError("No Python interpreter found to run the engine; set MSKAI_PYTHON")
        return sys.executable
    # Inside 3D Slicer sys.executable is the application: PythonSlicer of the same installation first, then PATH.
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    for folder in (exe.parent, exe.parent / "bin", exe.parent.parent / "bin"):
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    found = shutil.which("PythonSlicer")
    if not found:
        raise MskaiError(f"PythonSlicer was not found beside {exe} or on PATH; set MSKAI_PYTHON to run the engine")
    return found


def _read(stream, events, lines):
    """Reader thread: stderr JSON lines with a "stage" become progress events; other lines are kept (bounded)."""
    for line in stream:
        line = line.rstrip("\r\n")
        if events is not None and line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "stage" in event:
                events.put(event)
                continue
        lines.append(line)
    stream.close()


class EngineJob:
    """One engine run in its own process group; every method returns at once except wait() and cancel()."""

    grace = 3.0  # seconds cancel() gives the process tree to end on SIGTERM before it is killed

    def __init__(self, args, output=None, python=None, env=None):
        """args: the mskai command line (without `mskai`); output: the run's output folder, or None;
        python: the interpreter (default python_executable()); env: variables added to os.environ."""
        self.args = [str(a) for a in args]
        self.output = Path(output).resolve() if output is not None else None
        self.python, self.env = python, env
        self.state, self.returncode, self.error = "new", None, None
        self.messages = collections.deque(maxlen=200)  # human stdout lines
        self._stderr = collections.deque(maxlen=200)  # stderr lines that are not progress
        self._events, self._proc, self._readers, self._existed = queue.Queue(), None, [], False

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self):
        """Start `<python> -m mskai <args>` and return at once; MskaiError when the process cannot be started."""
        if self.state != "new":
            raise MskaiError(f"This engine job was already started ({self.state})")
        try:
            python = self.python or python_executable()
        except MskaiError as exc:
            self.state, self.error = "failed", str(exc)
            raise
        if os.name == "nt":
            flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
        else:
            flags = {"start_new_session": True}
        self._existed = self.output is not None and os.path.lexists(self.output)
        try:
            self._proc = subprocess.Popen(
                [python, "-m", "mskai", *self.args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self._environment(),
                text=True, encoding="utf-8", errors="replace", **flags)
        except (OSError, ValueError) as exc:
            self.state = "failed"
            self.error = f"Cannot start the engine with {python}: {getattr(exc, 'strerror', None) or exc}"
            raise MskaiError(self.error) from None
        self.state = "running"
        # The readers hold no reference to self, so a dropped job is collected and __del__ cancels it.
        self._readers = [threading.Thread(target=_read, args=args, daemon=True)
                         for args in ((self._proc.stdout, None, self.messages),
                                      (self._proc.stderr, self._events, self._stderr))]
        for reader in self._readers:
            reader.start()
        return self

    def _environment(self) -> dict:
        """The caller's environment, ``env``, unbuffered output, and this mskai's folder first on PYTHONPATH: the
        engine runs the same code as its caller (inside Slicer, the copy the extension installed)."""
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                              if p and p != package_root])
        return env

    def poll(self) -> list:
        """The progress dicts that arrived since the last call (never blocks); also notices the end of the run."""
        if self.state == "running" and self._proc.poll() is not None:
            self._finish()
        events = []
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events

    def wait(self, timeout=None):
        """Block until the run ends and return its return code; None when ``timeout`` seconds pass first."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            self._finish()
        return self.returncode

    def _finish(self, cancelled=False):
        if self.state != "running":
            return
        for reader in self._readers:
            reader.join(timeout=2)  # an orphaned grandchild may hold the pipes open; never hang on it
        self.returncode = self._proc.returncode
        if self.returncode == 0:
            self.state = "done"  # also a run that completed before cancel() reached it
        elif cancelled:
            self.state = "cancelled"
        else:
            self.state = "failed"
            errors = [line for line in self._stderr if line.startswith(ERROR_PREFIX)]
            self.error = (errors[-1][len(ERROR_PREFIX):] if errors else "\n".join(list(self._stderr)[-10:])
                          or f"The engine ended with exit code {self.returncode}")

    def cancel(self):
        """End the whole process tree, wait for it, and leave no partial output. Harmless when not running."""
        if self.state != "running":
            return
        if self._proc.poll() is not None:
            return self._finish()
        try:
            tree = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        deadline = time.monotonic() + self.grace
        self._signal(tree, "terminate", getattr(signal, "SIGTERM", None))
        try:
            self._proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(tree, timeout=max(0.0, deadline - time.monotonic()))
        self._signal(alive, "kill", getattr(signal, "SIGKILL", None))
        self._proc.wait()
        psutil.wait_procs(alive, timeout=self.grace)
        self._finish(cancelled=True)
        if self.state == "cancelled" and self.output is not None:
            self._remove_output()

    def _signal(self, procs, method, group_signal):
        """terminate/kill the engine and ``procs``; on POSIX also signal the engine's process group, which reaches
        descendants whose parent died before they were listed."""
        if os.name != "nt":
            try:
                os.killpg(self._proc.pid, group_signal)
            except OSError:
                pass
        for proc in procs:
            try:
                getattr(proc, method)()
            except psutil.Error:
                pass
        if self._proc.returncode is None:
            getattr(self._proc, method)()

    def _remove_output(self):
        """With the tree dead: put back an earlier output that an interrupted swap set aside, remove the staging
        folders, and remove the output folder when this cancelled run created it in its very last instant."""
        from mskai.outputs import OUTPUT_MARKER, remove_stale  # here: importing the launcher stays light for GUIs

        out, prefix = self.output, f".{self.output.name}.mskai-"
        if not os.path.lexists(out):
            for old in out.parent.glob(f"{glob.escape(prefix)}old-{self._proc.pid}-*"):
                os.rename(old, out)
                break
        remove_stale(out.parent, prefix)
        if not self._existed and out.is_dir() and not out.is_symlink() and (out / OUTPUT_MARKER).is_file():
            shutil.rmtree(out, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()

    def __del__(self):
        try:
            self.cancel()
        except Exception:
            pass
