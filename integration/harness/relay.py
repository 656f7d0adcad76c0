"""Runs the outbox-relay binary: config file, migrate/check, the `run` process."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn, Optional

import pytest

from .servers import REPO_DIR
from .wait import wait_until


class RelayError(RuntimeError):
    pass


def relay_binary() -> Path:
    """OUTBOX_RELAY_BIN, else <repo>/build/outbox-relay."""
    return Path(os.environ.get("OUTBOX_RELAY_BIN") or REPO_DIR / "build" / "outbox-relay")


def missing_build(msg: str) -> NoReturn:
    """A build the tests need is missing: a failure under OUTBOX_IT_REQUIRE_BINARY (what
    test-all.sh sets), a skip otherwise."""
    if os.environ.get("OUTBOX_IT_REQUIRE_BINARY"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_executable(path: Path, msg: str) -> Path:
    """`path` if it is an executable file, else missing_build(msg)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing_build(msg)
    return path


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid double-quoted YAML scalar


def to_yaml(d: dict, indent: int = 0) -> str:
    """Block-style YAML for dicts/lists of scalars (enough for the relay config)."""
    pad = "  " * indent
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            if v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {{}}")
        elif isinstance(v, (list, tuple)):
            if not v:
                lines.append(f"{pad}{k}: []")
            else:
                lines.append(f"{pad}{k}:")
                for item in v:
                    if isinstance(item, dict):
                        sub = to_yaml(item, indent + 2).lstrip()
                        lines.append(f"{pad}  - {sub}")
                    else:
                        lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{k}: {_scalar(v)}")
    return "\n".join(lines)


class Relay:
    """One relay instance: its config file and log live in workdir.

    `config` is a dict (written as YAML) or YAML text (written as is)."""

    def __init__(
        self,
        config: dict | str,
        workdir: os.PathLike | str,
        binary: Optional[os.PathLike | str] = None,
        name: str = "relay",
        env: Optional[dict[str, str]] = None,
    ):
        self.binary = Path(binary) if binary else relay_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.set_config(config)

    # ------------------------------------------------------------------ config
    def set_config(self, config: dict | str) -> None:
        if isinstance(config, dict) and "port" not in config.get("http", {}):
            # Never the fixed default 8080: any free port, read back with http_port().
            config = deep_merge(config, {"http": {"port": 0}})
        self.config = config
        text = config if isinstance(config, str) else to_yaml(config) + "\n"
        self.config_path.write_text(text)

    def _note(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"===== [harness {time.strftime('%H:%M:%S')}] {text}\n")

    # ------------------------------------------------------- one-shot commands
    def command(self, subcommand: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        """Run `outbox-relay SUBCOMMAND --config FILE ARGS`; output is captured (and
        appended to the log). Never raises on a non-zero exit."""
        cmd = [str(self.binary), subcommand, "--config", str(self.config_path), *args]
        self._note("$ " + " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=self.env)
        with open(self.log_path, "a") as f:
            f.write(r.stdout)
            f.write(r.stderr)
        self._note(f"exit {r.returncode}")
        return r

    def migrate(self, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        r = self.command("migrate", timeout_s=timeout_s)
        if r.returncode != 0:
            raise RelayError(f"outbox-relay migrate exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def check(self, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        """`outbox-relay check`; returns the CompletedProcess (caller asserts)."""
        return self.command("check", timeout_s=timeout_s)

    # ---------------------------------------------------------- the run process
    def start(self, *args: str) -> "Relay":
        if self.running:
            raise RelayError(f"{self.name} already running (pid {self.proc.pid})")
        self.starts += 1
        cmd = [str(self.binary), "run", "--config", str(self.config_path), *args]
        self._note(f"start #{self.starts}: " + " ".join(cmd))
        log = open(self.log_path, "a")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # our signals only, never the test runner's
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout_s: Optional[float] = None) -> int:
        """Exit code; raises subprocess.TimeoutExpired after timeout_s."""
        if self.proc is None:
            raise RelayError("not started")
        rc = self.proc.wait(timeout=timeout_s)
        self._note(f"exited {rc}")
        return rc

    def signal(self, sig: int) -> None:
        if self.running:
            os.kill(self.proc.pid, sig)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait at most timeout_s. Returns the exit code (negative =
        killed by that signal). If it does not exit in time: SIGKILL and RelayError."""
        if self.proc is None:
            raise RelayError("not started")
        if self.running:
            self._note("SIGTERM")
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RelayError(f"{self.name} did not exit within {timeout_s}s of SIGTERM (SIGKILLed)") from None

    def kill(self) -> int:
        if self.proc is None:
            raise RelayError("not started")
        if self.running:
            self._note("SIGKILL")
            self.signal(signal.SIGKILL)
        return self.wait(30)

    def stop_quietly(self) -> None:
        """Cleanup: terminate, kill if needed; never raises."""
        try:
            if self.running:
                self.terminate(20)
        except Exception:
            try:
                self.kill()
            except Exception:
                pass

    def proc_status_kb(self, field: str = "VmHWM") -> Optional[int]:
        """A kB figure of /proc/<pid>/status (VmHWM: peak resident set) while running."""
        if not self.running:
            return None
        try:
            for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def assert_running(self, what: str = "") -> None:
        if not self.running:
            raise RelayError(
                f"{self.name} exited unexpectedly ({self.returncode}){' ' + what if what else ''}; log tail:\n"
                + self.log_tail()
            )

    # ------------------------------------------------------------------- http
    HTTP_LISTENING = re.compile(r"http: listening on (\S+):(\d+)")

    def http_port(self, timeout_s: float = 30.0) -> int:
        """The port the current run serves /metrics, /healthz and /readyz on, read from its
        log line "http: listening on ADDRESS:PORT" (after the latest start)."""
        marker = f"start #{self.starts}:"

        def probe():
            text = self.log_text()
            at = text.rfind(marker)
            m = self.HTTP_LISTENING.search(text, at) if at >= 0 else None
            return int(m.group(2)) if m else None

        return wait_until(probe, timeout_s, 0.05, f"{self.name}'s http port", check=self.assert_running)

    # --------------------------------------------------------------------- log
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_grep(self, needle: str, limit: int = 20) -> str:
        hits = [ln for ln in self.log_text().splitlines() if needle.lower() in ln.lower()]
        return "\n".join(hits[:limit])
