"""Item 8.2: client authentication under Greengrass v2 through the nucleus IPC.

(a) The nucleus stand-in (nucleus_ipc.py, the project's own) is first checked with the real
    awsiotsdk IPC client (GreengrassCoreIPCClientV2.validate_authorization_token, awsiotsdk
    1.31.0 from PyPI), in its classic and lite modes: CONNECT with the stream manager's
    SVCUID, a valid and an invalid token, a caller that is not the stream manager, and an
    unknown SVCUID.
(b) weir then runs with SVCUID and AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT (a
    path relative to weir's working directory) pointing at the stand-in, and the real
    stream_manager 1.1.2 SDK (token in AWS_CONTAINER_AUTHORIZATION_TOKEN) checks that a valid
    token is served, an invalid one is refused as Unauthorized, a validation the nucleus holds
    does not hold up another client's handshake, validations share one IPC connection, a
    nucleus that never answers or is down gets the client refused (and a log line), a
    restarted nucleus serves clients again, the lite mode (replies without the terminate
    flag) works, and a nucleus that refuses weir's own CONNECT (both ways) refuses clients.

(c) Readiness and telemetry (issue 8 items 1 and 7): the stand-in's UpdateState and
    PutComponentMetric are first checked with awsiotsdk (GreengrassCoreIPCClientV2.update_state,
    put_component_metric; lite refuses the metric as ggipcd does), then weir runs against it: the
    stand-in receives UpdateState RUNNING once, and at that moment a TCP connect to weir's port
    succeeds (the stand-in tries it itself); after an append and a few shortened telemetry
    intervals (WEIR_TELEMETRY_INTERVAL_MS) it has received BytesAppended summing to the bytes
    appended; against lite, weir still reports RUNNING and stops telemetry after its one
    refused PutComponentMetric, with one log line.

Every process started here (stand-ins, weir, clients) is stopped by its own PID. The same file,
run with a first argument `awsiotsdk`, `awsiotsdk-lifecycle` or `sm-client`, is the client
program of (a), (c) or (b).
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))

WEIR_SVCUID = "WEIRSVCUIDAAAAAA"     # 16 characters of base64 (nucleus lite checks that)
CLIENT_TOKEN = "CLIENTTOKENAAAAA"    # the SVCUID of a client component
BAD_TOKEN = "NOTATOKENAAAAAAA"       # no component's
UNKNOWN_SVCUID = "UNKNOWNSVCUIDAAA"
COMPONENTS = [f"aws.greengrass.StreamManager={WEIR_SVCUID}", f"com.example.Client={CLIENT_TOKEN}"]

START_DEADLINE_S = 20
CLIENT_DEADLINE_S = 90
STREAM = "IpcAuthStream"


# ---------------------------------------------------------------- client programs

def awsiotsdk_main(argv):
    """awsiotsdk venv: connect to SOCKET with SVCUID, validate each token; one line per result."""
    sock, svcuid, tokens = argv[0], argv[1], argv[2:]
    from awsiot.greengrasscoreipc import connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from awsiot.greengrasscoreipc import model
    try:
        client = GreengrassCoreIPCClientV2(client=connect(ipc_socket=sock, authtoken=svcuid, timeout=10))
    except Exception as e:
        print(f"CONNECT_FAILED {type(e).__name__}", flush=True)
        return 0
    try:
        for token in tokens:
            try:
                r = client.validate_authorization_token(token=token)
                outcome = "VALID" if r.is_valid else "NOT_VALID"
            except model.InvalidTokenError:
                outcome = "INVALID_TOKEN"
            except model.UnauthorizedError:
                outcome = "UNAUTHORIZED"
            except Exception as e:
                outcome = f"ERROR_{type(e).__name__}"
            print(f"RESULT {token} {outcome}", flush=True)
    finally:
        client.close()
    return 0


def awsiotsdk_lifecycle_main(argv):
    """awsiotsdk venv: connect to SOCKET with SVCUID, UpdateState RUNNING, PutComponentMetric of one
    BytesAppended=5; one line per result."""
    sock, svcuid = argv[0], argv[1]
    from awsiot.greengrasscoreipc import connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from awsiot.greengrasscoreipc import model
    client = GreengrassCoreIPCClientV2(client=connect(ipc_socket=sock, authtoken=svcuid, timeout=10))
    try:
        for name, call in (
                ("UPDATE_STATE", lambda: client.update_state(state=model.ReportedLifecycleState.RUNNING)),
                ("PUT_METRIC", lambda: client.put_component_metric(metrics=[
                    model.Metric(name="BytesAppended", unit=model.MetricUnitType.BYTES, value=5)]))):
            try:
                r = call()
                outcome = f"OK {type(r).__name__}"
            except model.ServiceError:
                outcome = "SERVICE_ERROR"
            except model.UnauthorizedError:
                outcome = "UNAUTHORIZED"
            except Exception as e:
                outcome = f"ERROR_{type(e).__name__}"
            print(f"{name} {outcome}", flush=True)
    finally:
        client.close()
    return 0


def sm_client_main(argv):
    """stream_manager venv: connect (token from AWS_CONTAINER_AUTHORIZATION_TOKEN), append and
    read back; prints SERVED, or REFUSED status=<ConnectResponse status> exc=<exception>."""
    import logging
    from stream_manager import MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull, StreamManagerClient
    from stream_manager.exceptions import ResourceNotFoundException

    statuses = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "unexpected status" in record.msg and record.args:
                statuses.append(getattr(record.args[0], "name", str(record.args[0])))

    logger = logging.getLogger("weir-ipc-auth-client")
    logger.addHandler(Catch())
    logger.propagate = False
    try:
        client = StreamManagerClient(logger=logger, request_timeout=60)
    except Exception as e:
        print(f"REFUSED status={statuses[0] if statuses else '?'} exc={type(e).__name__}", flush=True)
        return 0
    try:
        try:
            client.delete_message_stream(STREAM)
        except ResourceNotFoundException:
            pass
        client.create_message_stream(MessageStreamDefinition(name=STREAM, strategy_on_full=StrategyOnFull.OverwriteOldestData))
        seq = client.append_message(STREAM, b"ipc-auth")
        got = client.read_messages(STREAM, ReadMessagesOptions(desired_start_sequence_number=seq, min_message_count=1))
        if [m.payload for m in got] != [b"ipc-auth"]:
            print(f"WRONG read {got!r}", flush=True)
            return 1
        print("SERVED", flush=True)
        return 0
    finally:
        client.close()


# ---------------------------------------------------------------- driver

class StandIn:
    """One nucleus_ipc.py process; its stdout lines are collected."""

    def __init__(self, path, mode, probe_port=None):
        self.path, self.mode = path, mode
        self.lines = []
        self.cond = threading.Condition()
        probe = ["--probe-port", str(probe_port)] if probe_port else []
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "nucleus_ipc.py"), "--socket", path, "--mode", mode] + probe
            + [a for c in COMPONENTS for a in ("--component", c)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.wait_for(r"nucleus_ipc listening on ", START_DEADLINE_S):
            self.stop()
            raise HarnessError(f"the nucleus stand-in did not start:\n{self.tail()}")

    def _drain(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern, deadline_s):
        """Waits (bounded) for a line matching pattern; True if it came."""
        rx = re.compile(pattern)
        end = time.monotonic() + deadline_s
        with self.cond:
            while not any(rx.search(l) for l in self.lines):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def count(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for l in self.lines if rx.search(l))

    def matches(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return [m for m in (rx.search(l) for l in self.lines) if m]

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def tail(self, n=30):
        with self.cond:
            return "\n".join("    nucleus: " + l for l in self.lines[-n:])


def awsiotsdk(sock, svcuid, tokens):
    from harness import run_client, sdk_python
    rc, out, err = run_client([sdk_python("py311-awsiotsdk-1.31.0"), os.path.abspath(__file__), "awsiotsdk",
                               sock, svcuid] + tokens, dict(os.environ), CLIENT_DEADLINE_S)
    if rc != 0:
        raise HarnessError(f"the awsiotsdk client exited {rc}:\n{out}\n{err[-3000:]}")
    return out


def check_standin(report, tmp, mode):
    """(a): the stand-in as the real awsiotsdk IPC client sees it."""
    sock = os.path.join(tmp, f"{mode}.socket")
    nucleus = StandIn(sock, mode)
    try:
        out = awsiotsdk(sock, WEIR_SVCUID, [CLIENT_TOKEN, BAD_TOKEN, WEIR_SVCUID])
        expected = [f"RESULT {CLIENT_TOKEN} VALID", f"RESULT {BAD_TOKEN} INVALID_TOKEN", f"RESULT {WEIR_SVCUID} VALID"]
        case = f"awsiotsdk/{mode}: the stream manager validates a valid and an invalid token"
        if out.splitlines() == expected and nucleus.count(r"connect accepted component=aws.greengrass.StreamManager") == 1:
            report.ok(case)
        else:
            report.fail(case, f"got {out!r}\n{nucleus.tail()}")
        out = awsiotsdk(sock, CLIENT_TOKEN, [CLIENT_TOKEN])
        case = f"awsiotsdk/{mode}: another component may not validate tokens"
        if out.splitlines() == [f"RESULT {CLIENT_TOKEN} UNAUTHORIZED"]:
            report.ok(case)
        else:
            report.fail(case, f"got {out!r}")
        out = awsiotsdk(sock, UNKNOWN_SVCUID, [CLIENT_TOKEN])
        case = f"awsiotsdk/{mode}: a CONNECT with an unknown SVCUID is refused"
        if out.startswith("CONNECT_FAILED") and nucleus.count(r"connect refused") == 1:
            report.ok(case, out.strip())
        else:
            report.fail(case, f"got {out!r}")
    finally:
        rc = nucleus.stop()
        if rc != 0:
            report.fail(f"awsiotsdk/{mode}: the stand-in exits 0", f"exit {rc}\n{nucleus.tail()}")


def check_standin_lifecycle(report, tmp, mode):
    """(c), first half: UpdateState and PutComponentMetric as awsiotsdk sees them."""
    from harness import run_client, sdk_python
    sock = os.path.join(tmp, f"{mode}-lifecycle.socket")
    nucleus = StandIn(sock, mode)
    try:
        rc, out, err = run_client([sdk_python("py311-awsiotsdk-1.31.0"), os.path.abspath(__file__),
                                   "awsiotsdk-lifecycle", sock, WEIR_SVCUID], dict(os.environ), CLIENT_DEADLINE_S)
        if rc != 0:
            raise HarnessError(f"the awsiotsdk client exited {rc}:\n{out}\n{err[-3000:]}")
        metric = "OK PutComponentMetricResponse" if mode == "classic" else "SERVICE_ERROR"
        expected = ["UPDATE_STATE OK UpdateStateResponse", f"PUT_METRIC {metric}"]
        case = f"awsiotsdk/{mode}: UpdateState answered, PutComponentMetric {'answered' if mode == 'classic' else 'refused as lite does'}"
        seen_state = nucleus.count(r"update_state component=aws.greengrass.StreamManager state=RUNNING") == 1
        seen_metric = nucleus.count(r"metric component=aws.greengrass.StreamManager name=BytesAppended unit=BYTES value=5$")
        if out.splitlines() == expected and seen_state and seen_metric == (1 if mode == "classic" else 0):
            report.ok(case)
        else:
            report.fail(case, f"got {out!r}\n{nucleus.tail()}")
    finally:
        rc = nucleus.stop()
        if rc != 0:
            report.fail(f"awsiotsdk/{mode}: the lifecycle stand-in exits 0", f"exit {rc}\n{nucleus.tail()}")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_readiness_and_telemetry(report, tmp):
    """(c), second half: weir against the stand-in (classic, then lite)."""
    from harness import Weir
    for mode in ("classic", "lite"):
        sock = os.path.join(tmp, f"{mode}-ready.socket")
        port = free_port()
        nucleus = StandIn(sock, mode, probe_port=port)
        weir = Weir(f"ready-{mode}", env={"WEIR_TELEMETRY_INTERVAL_MS": "200"})
        try:
            with NucleusEnv({"SVCUID": WEIR_SVCUID, "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": sock}):
                weir.start(port=port)
            case = f"{mode}: weir reports RUNNING, and its port takes connections at that moment"
            if nucleus.wait_for(r"update_state component=aws.greengrass.StreamManager state=RUNNING port_open=True",
                                START_DEADLINE_S):
                report.ok(case)
            else:
                report.fail(case, f"{nucleus.tail()}\n{weir.log_tail(20)}")
            expect(report, f"{mode}: a client is served", sm_client(weir, CLIENT_TOKEN), "SERVED", weir, nucleus)
            if mode == "classic":
                # sm-client appends one message, b"ipc-auth" (8 bytes).
                case = "classic: the nucleus receives BytesAppended summing to the bytes appended"
                got = nucleus.wait_for(r"name=BytesAppended unit=BYTES value=[1-9]", START_DEADLINE_S)
                values = [int(m.group(1)) for m in nucleus.matches(r"name=BytesAppended unit=BYTES value=(\d+)")]
                kinesis = [int(m.group(1)) for m in nucleus.matches(r"name=BytesUploadedToKinesis unit=BYTES value=(\d+)")]
                if got and sum(values) == 8 and sum(kinesis) == 0:
                    report.ok(case, f"values {values}")
                else:
                    report.fail(case, f"BytesAppended {values}, Kinesis {kinesis}\n{nucleus.tail()}")
            else:
                got = nucleus.wait_for(r"unsupported operation aws.greengrass#PutComponentMetric", START_DEADLINE_S)
                # More appends after the refusal: nothing more may be sent for them.
                expect(report, "lite: a client is served after the refusal", sm_client(weir, CLIENT_TOKEN), "SERVED",
                       weir, nucleus)
            weir.stop()
            if mode == "lite":
                case = "lite: PutComponentMetric is refused once, weir logs it once and stops telemetry"
                logged = sum(1 for l in weir.log_lines if "refuses component metrics" in l)
                tried = nucleus.count(r"unsupported operation aws.greengrass#PutComponentMetric")
                if got and logged == 1 and tried == 1:
                    report.ok(case)
                else:
                    report.fail(case, f"tried {tried}, logged {logged}\n{nucleus.tail()}\n{weir.log_tail(20)}")
            case = f"{mode}: RUNNING is reported once"
            n = nucleus.count(r"update_state ")
            report.ok(case) if n == 1 else report.fail(case, nucleus.tail())
        except BaseException:
            weir.kill()
            raise
        finally:
            nucleus.stop()


class NucleusEnv:
    """Puts weir's Greengrass variables in the environment while weir starts (the harness
    passes the environment on)."""

    def __init__(self, values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def sm_client(weir, token, background=False):
    from harness import run_client
    argv = [sys.executable, os.path.abspath(__file__), "sm-client"]
    env = weir.client_env(token=token)
    if background:
        return subprocess.Popen(argv, env=env, cwd=HERE, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, out, err = run_client(argv, env, CLIENT_DEADLINE_S)
    if rc != 0 or not out.strip():
        raise HarnessError(f"the stream manager client exited {rc}:\n{out}\n{err[-3000:]}")
    return out.strip().splitlines()[-1]


def expect(report, case, got, want, weir, nucleus=None):
    if got == want or (want.endswith("*") and got.startswith(want[:-1])):
        report.ok(case, got)
        return True
    report.fail(case, f"got {got!r}, expected {want!r}\n{weir.log_tail(20)}" + (f"\n{nucleus.tail()}" if nucleus else ""))
    return False


def check_weir(report, tmp):
    """(b): weir against the stand-in, with the real stream_manager SDK."""
    from harness import Weir
    sock = os.path.join(tmp, "ipc.socket")
    nucleus = StandIn(sock, "classic")
    weir = Weir("ipc-auth")
    try:
        # Relative to weir's working directory (the harness runs weir in weir.tmp), as the
        # classic nucleus hands it out when the absolute path is too long.
        rel = os.path.relpath(sock, weir.tmp)
        with NucleusEnv({"SVCUID": WEIR_SVCUID, "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": rel}):
            weir.start()
        case = "weir uses the nucleus IPC when SVCUID and the socket are set"
        if any("validated by the Greengrass nucleus" in l for l in weir.current_log()):
            report.ok(case, f"socket {rel}")
        else:
            report.fail(case, weir.log_tail(20))

        expect(report, "classic: a valid token is served", sm_client(weir, CLIENT_TOKEN), "SERVED", weir, nucleus)
        expect(report, "classic: an invalid token is refused as Unauthorized", sm_client(weir, BAD_TOKEN),
               "REFUSED status=Unauthorized exc=ConnectFailedException", weir, nucleus)
        expect(report, "classic: no token is refused as Unauthorized", sm_client(weir, ""),
               "REFUSED status=Unauthorized exc=ConnectFailedException", weir, nucleus)

        # A validation the nucleus holds: another client's handshake goes on meanwhile.
        held = sm_client(weir, "HOLD" + CLIENT_TOKEN, background=True)
        try:
            if not nucleus.wait_for(r"holding stream=", START_DEADLINE_S):
                report.fail("a held validation reaches the nucleus", nucleus.tail())
            else:
                other = sm_client(weir, CLIENT_TOKEN)
                still_held = held.poll() is None
                nucleus.signal(signal.SIGUSR1)
                out, err = held.communicate(timeout=CLIENT_DEADLINE_S)
                case = "a client is served while another one's validation is held by the nucleus"
                if other == "SERVED" and still_held and out.strip() == "SERVED":
                    report.ok(case)
                else:
                    report.fail(case, f"other {other!r}, held one still waiting {still_held}, then {out!r} {err[-2000:]}")
        finally:
            if held.poll() is None:
                held.kill()
                held.wait()
        case = "validations share one IPC connection"
        if nucleus.count(r"^connection \d+$") == 1 and nucleus.count(r"connect accepted component=aws.greengrass.StreamManager") == 1:
            report.ok(case, f"{nucleus.count('validate stream=')} validations")
        else:
            report.fail(case, nucleus.tail())
        nucleus.stop()

        # A nucleus that never answers: refused (weir's bound is 8 s), with a log line.
        nucleus = StandIn(sock, "silent")
        logged = len(weir.log_lines)
        got = sm_client(weir, CLIENT_TOKEN)
        refusal_logged = any("refused a client" in l for l in weir.log_lines[logged:])
        if expect(report, "silent nucleus: the client is refused", got,
                  "REFUSED status=UnknownFailure exc=ConnectFailedException", weir, nucleus):
            case = "silent nucleus: weir logs the refusal"
            report.ok(case) if refusal_logged else report.fail(case, weir.log_tail(20))
        nucleus.stop()

        # No nucleus at all (its socket is gone).
        expect(report, "nucleus down: the client is refused", sm_client(weir, CLIENT_TOKEN),
               "REFUSED status=UnknownFailure exc=ConnectFailedException", weir)

        # The nucleus is back: clients are served again (weir's backoff is at most 2 s; the
        # deadline only bounds the wait).
        nucleus = StandIn(sock, "classic")
        end = time.monotonic() + 30
        attempts = []
        while True:
            attempts.append(sm_client(weir, CLIENT_TOKEN))
            if attempts[-1] == "SERVED" or time.monotonic() > end:
                break
        expect(report, f"nucleus restarted: a valid token is served again ({len(attempts)} attempt(s))", attempts[-1],
               "SERVED", weir, nucleus)
        expect(report, "nucleus restarted: an invalid token is still Unauthorized", sm_client(weir, BAD_TOKEN),
               "REFUSED status=Unauthorized exc=ConnectFailedException", weir, nucleus)
        nucleus.stop()

        # Nucleus lite: replies without the terminate flag, lite's error bodies.
        nucleus = StandIn(sock, "lite")
        end = time.monotonic() + 30
        while True:
            got = sm_client(weir, CLIENT_TOKEN)
            if got == "SERVED" or time.monotonic() > end:
                break
        expect(report, "lite: a valid token is served", got, "SERVED", weir, nucleus)
        expect(report, "lite: a second valid client on the same connection", sm_client(weir, CLIENT_TOKEN), "SERVED",
               weir, nucleus)
        expect(report, "lite: an invalid token is refused as Unauthorized", sm_client(weir, BAD_TOKEN),
               "REFUSED status=Unauthorized exc=ConnectFailedException", weir, nucleus)
        weir.stop()
        report.ok("weir stops cleanly (exit 0, no panic)")

        # A nucleus that refuses weir's own CONNECT (an SVCUID it does not know): lite closes
        # the connection without an ACK, classic ACKs without the accepted flag.
        for mode in ("lite", "classic"):
            if nucleus.mode != mode:
                nucleus.stop()
                nucleus = StandIn(sock, mode)
            weir = Weir(f"ipc-auth-{mode}")
            with NucleusEnv({"SVCUID": UNKNOWN_SVCUID,
                             "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": sock}):
                weir.start()
            expect(report, f"{mode}: a nucleus that refuses weir's CONNECT gets the client refused",
                   sm_client(weir, CLIENT_TOKEN), "REFUSED status=UnknownFailure exc=ConnectFailedException",
                   weir, nucleus)
            case = f"{mode}: weir logs that the nucleus did not accept its connect"
            if any("did not accept weir's IPC connect" in l for l in weir.current_log()):
                report.ok(case)
            else:
                report.fail(case, weir.log_tail(20))
            weir.stop()
    except BaseException:
        weir.kill()
        raise
    finally:
        nucleus.stop()


def main():
    from harness import Report
    report = Report("ipc auth")
    tmp = tempfile.mkdtemp(prefix="weir-ipc-")
    try:
        for mode in ("classic", "lite"):
            check_standin(report, tmp, mode)
            check_standin_lifecycle(report, tmp, mode)
        if report.failed:
            print("the stand-in does not behave as awsiotsdk expects: weir is not tested against it", flush=True)
        else:
            check_weir(report, tmp)
            check_readiness_and_telemetry(report, tmp)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "awsiotsdk":
        sys.exit(awsiotsdk_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "awsiotsdk-lifecycle":
        sys.exit(awsiotsdk_lifecycle_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "sm-client":
        try:
            sys.exit(sm_client_main(sys.argv[2:]))
        except Exception:
            traceback.print_exc()
            sys.exit(1)
    sys.path.insert(0, HERE)
    from harness import HarnessError, main_guard  # noqa: E402
    main_guard(main)
