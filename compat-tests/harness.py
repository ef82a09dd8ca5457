"""Shared helpers for the weir compatibility tests (Python 3.11 standard library only).

`Weir` starts the server under test the way SPEC.md prescribes: port 0, a fresh
temporary store, client authentication ON with a token file we write ourselves.
Readiness is detected by reading weir's stderr until the line
`weir listening on 127.0.0.1:<PORT>` appears (bounded by a deadline); stopping
sends SIGTERM and requires exit status 0.

The same `Weir` can be started again on its store (`restart()`: SIGTERM, then a
new process on the same store folder; `crash()`: SIGKILL, keeping the store for
the next `start()`); the temporary folder goes away only with a final
`stop()`/`kill()`.  `Weir(store=...)` runs on a store folder of the caller's
instead (which the harness never removes).
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
READY_RE = re.compile(r"listening on ([0-9.]+):([0-9]+)")

START_DEADLINE_S = 30
STOP_DEADLINE_S = 20


class HarnessError(Exception):
    """Infrastructure failure (weir did not start/stop properly, a client crashed...)."""


def _die_with_parent():
    """In the child before exec: SIGKILL it when the driver dies (Linux prctl PR_SET_PDEATHSIG),
    so a driver killed by a timeout or a closed output pipe leaves no weir behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception:
        pass


def weir_binary():
    path = os.environ.get("WEIR_BIN") or os.path.join(HERE, "..", "target", "debug", "weir")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise HarnessError(f"weir binary not found or not executable: {path} (build it or set WEIR_BIN)")
    return path


def cache_dir():
    """Where setup-clients.sh installed the SDKs (run.sh exports WEIR_COMPAT_CACHE)."""
    path = os.environ.get("WEIR_COMPAT_CACHE") or os.path.join(HERE, "..", "target", "compat-cache")
    return os.path.abspath(path)


def sdk_python(venv_name):
    return os.path.join(cache_dir(), venv_name, "bin", "python")


def node_modules():
    return os.path.join(cache_dir(), "node-core-sdk-1.7.0", "node_modules")


class Weir:
    """One weir process with its own store directory and auth token."""

    def __init__(self, name="weir", store=None, env=None):
        """store: a store folder of the caller's (e.g. on a file system it mounted);
        created if missing and never removed here.  By default a fresh folder in
        the temporary directory, removed with it.  env: variables set for every
        weir process of this object on top of os.environ (a value None removes the
        variable), so a case's export settings do not leak into another's."""
        self.name = name
        self.env = dict(env or {})
        self.binary = weir_binary()
        self.tmp = tempfile.mkdtemp(prefix=f"weir-compat-{name}-")
        self.store = os.path.abspath(store) if store else os.path.join(self.tmp, "store")
        os.makedirs(self.store, exist_ok=store is not None)
        self.token = secrets.token_hex(32)
        self.token_file = os.path.join(self.tmp, "auth_token")
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        self.proc = None
        self.host = None
        self.port = None
        self.log_lines = []          # every stderr line weir printed (for diagnostics)
        self.starts = 0              # processes started on this store so far
        self.gen_start = 0           # index in log_lines where the current process's lines begin
        self._ready = threading.Event()
        self._drainer = None

    # -- lifecycle -------------------------------------------------------

    def start(self, port=0):
        """Start a weir process on this store (port 0 = a free port)."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("weir is already running")
        self.starts += 1
        self.log_lines.append(f"---- harness: weir start #{self.starts} on store {self.store} (port {port or 'any'})")
        self.gen_start = len(self.log_lines)
        self._ready = threading.Event()
        self.host = self.port = None
        env = dict(os.environ)
        # Do not leak a token from the caller's environment into weir (env= may set one:
        # the token exchange service's, as on a Greengrass device).
        env.pop("AWS_CONTAINER_AUTHORIZATION_TOKEN", None)
        # Exports off unless a test turns them on (env={"WEIR_EXPORTS_ENABLED": "true"}):
        # with no cloud here, an export's errorMessage would appear in describe at a
        # moment no protocol test can predict. test_export.py runs them against stand-ins.
        env["WEIR_EXPORTS_ENABLED"] = "false"
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env.update({
            "STREAM_MANAGER_SERVER_PORT": str(port),
            "STREAM_MANAGER_STORE_ROOT_DIR": self.store,
            "STREAM_MANAGER_AUTHENTICATE_CLIENT": "true",
            "WEIR_AUTH_TOKEN_FILE": self.token_file,
        })
        self.proc = subprocess.Popen(
            [self.binary], env=env, cwd=self.tmp,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace", preexec_fn=_die_with_parent,
        )
        # A thread keeps draining stderr for the whole life of the process (so weir
        # can never block on a full pipe) and flags readiness when the line appears.
        self._drainer = threading.Thread(target=self._drain, args=(self.proc, self._ready), daemon=True)
        self._drainer.start()
        deadline = time.monotonic() + START_DEADLINE_S
        while not self._ready.is_set():
            if self.proc.poll() is not None:
                self._drainer.join(5)
                raise HarnessError(f"weir exited with {self.proc.returncode} before becoming ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise HarnessError(f"weir did not print its readiness line within {START_DEADLINE_S}s:\n{self.log_tail()}")
            self._ready.wait(0.1)
        if self.host != "127.0.0.1":
            self.stop()
            raise HarnessError(f"weir listens on {self.host}, expected loopback 127.0.0.1")
        return self

    def _drain(self, proc, ready):
        for line in proc.stderr:
            line = line.rstrip("\n")
            self.log_lines.append(line)
            if not ready.is_set():
                m = READY_RE.search(line)
                if m and "weir listening on" in line:
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()

    def stop(self, cleanup=True):
        """SIGTERM, wait (bounded), and require exit status 0.

        cleanup=False keeps the store folder for a later start()."""
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            self._cleanup()
            raise HarnessError(f"weir was not running at stop time (exit status {rc}):\n{self.log_tail()}")
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HarnessError(f"weir did not exit within {STOP_DEADLINE_S}s of SIGTERM:\n{self.log_tail()}")
        self._drainer.join(5)
        if cleanup:
            self._cleanup()
        panics = [l for l in self.log_lines if "panicked" in l]
        if panics:
            if not cleanup:
                self._cleanup()
            raise HarnessError(f"weir panicked during the run (exit status {rc}):\n{self.log_tail()}")
        if rc != 0:
            if not cleanup:
                self._cleanup()
            raise HarnessError(f"weir exited with status {rc} after SIGTERM (expected 0):\n{self.log_tail()}")

    def restart(self, same_port=False):
        """Stop weir with SIGTERM (exit 0 required) and start it again on the same store.

        same_port=True asks the new process for the port the old one had (so a
        client that reconnects by itself finds it); otherwise a free port."""
        port = self.port if same_port else 0
        self.stop(cleanup=False)
        return self.start(port=port)

    def crash(self):
        """SIGKILL weir (a crash: no shutdown code runs) and keep the store for start()."""
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise HarnessError(f"weir was not running at kill time (exit status {rc}):\n{self.log_tail()}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._drainer.join(5)
        self.log_lines.append(f"---- harness: weir #{self.starts} killed with SIGKILL")
        panics = [l for l in self.log_lines if "panicked" in l]
        if panics:
            raise HarnessError(f"weir panicked before it was killed:\n{self.log_tail()}")

    def current_log(self):
        """stderr lines of the current (or last) weir process only."""
        return self.log_lines[self.gen_start:]

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()

    def _cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            self.kill()
        return False

    # -- helpers ---------------------------------------------------------

    def log_tail(self, n=40):
        return "\n".join("    weir: " + l for l in self.log_lines[-n:])

    def client_env(self, token=None):
        """Environment for an SDK client process talking to this weir."""
        env = dict(os.environ)
        env["STREAM_MANAGER_SERVER_PORT"] = str(self.port)
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = self.token if token is None else token
        env["PYTHONUNBUFFERED"] = "1"
        env["NODE_PATH"] = node_modules()
        return env


def run_client(argv, env, timeout, cwd=HERE):
    """Run a client program to completion; returns (returncode, stdout, stderr).

    A client that exceeds `timeout` is killed and reported as a harness error
    (a hang is always a failure, the deadline only bounds how long we wait)."""
    try:
        p = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise HarnessError(f"{' '.join(argv)} did not finish within {timeout}s\n--- stdout\n{out}\n--- stderr\n{err[-4000:]}")
    return p.returncode, p.stdout, p.stderr


def indent(text, prefix="    "):
    return "\n".join(prefix + l for l in text.rstrip("\n").splitlines())


class Report:
    """Collects PASS/FAIL lines for one test program and computes its exit code."""

    def __init__(self, title):
        self.title = title
        self.passed = []
        self.failed = []

    def ok(self, case, detail=""):
        self.passed.append(case)
        print(f"PASS {case}" + (f" ({detail})" if detail else ""), flush=True)

    def fail(self, case, reason):
        self.failed.append((case, reason))
        print(f"FAIL {case}: {reason}", flush=True)

    def finish(self):
        print(f"== {self.title}: {len(self.passed)} passed, {len(self.failed)} failed", flush=True)
        return 0 if not self.failed and self.passed else 1


def in_ci():
    """CI runs with CI=true; there a test that skips has failed."""
    return os.environ.get("CI", "").strip().lower() == "true"


def skip(what, why):
    """A test that cannot run here. On a developer's machine: a SKIP line and
    exit status 0; under CI=true: a FAIL line and status 1, because a CI run
    must not pass a test by skipping it. Returns the exit status."""
    if in_ci():
        print(f"FAIL {what}: could not run ({why}); under CI=true a skip is a failure", flush=True)
        return 1
    print(f"SKIP {what}: {why}", flush=True)
    return 0


def main_guard(fn):
    """Run a test program's main(); infrastructure errors become exit status 2."""
    try:
        sys.exit(fn())
    except HarnessError as e:
        print(f"HARNESS ERROR: {e}", flush=True)
        sys.exit(2)
