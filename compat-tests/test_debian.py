"""Issue 8 packaging: the Debian package (packaging/debian/).

build-deb.sh builds the .deb around the weir binary under test (dpkg-deb,
gzip for speed); its control data is checked (conffile, dependencies,
maintainer scripts). Then, as root on this machine:

1. `dpkg -i`: /usr/bin/weir, the unit, /etc/weir/weir.toml and weir.env, the system user
   and group weir (no login shell), /var/lib/weir owned by weir, mode 0750;
   `systemd-analyze verify` passes on the installed unit, which says
   Type=notify, User=weir, EnvironmentFile=-/etc/weir/weir.env, ExecStart=... --config /etc/weir/weir.toml,
   Restart=on-failure.
2. No systemd runs here, so the INSTALLED /usr/bin/weir is started as the
   unit would start it: as user weir, in /var/lib/weir, with a service
   manager's bare environment plus the package's env file (parsed as
   EnvironmentFile= does), the port set to 0 (no fixed port), and
   NOTIFY_SOCKET pointing at a datagram socket of ours. weir must send READY=1
   there, be connectable once it has, serve the stream_manager 1.1.2 SDK with
   the token it created in /var/lib/weir/auth_token, keep its store in
   /var/lib/weir owned by weir, and exit 0 on SIGTERM to its PID.
3. `dpkg -r`: the binary and the unit are gone; the conffile, the store (with
   the stream data) and the user stay.
4. `dpkg -P`: the conffile, /etc/weir, the store, the user, the group and the
   service's enablement links are gone; dpkg no longer knows the package.

What only a machine with systemd checks: the unit started by systemd
(sandboxing, StateDirectory, Restart=on-failure, the enable/start in postinst).
"""
import os
import pwd
import grp
import re
import shutil
import socket
import subprocess
import tempfile
import time

from harness import HarnessError, Report, indent, main_guard, skip, weir_binary
from test_packaging import ROOT, Problems, Server, base_env, client_roundtrip, read_token

DEB_DIR = os.path.join(ROOT, "packaging", "debian")
UNIT = "/lib/systemd/system/weir.service"
ENV_FILE = "/etc/weir/weir.env"
CONFIG_FILE = "/etc/weir/weir.toml"
STORE = "/var/lib/weir"
OUR_MAINTAINER = "weir maintainers <weir@localhost>"
READY_DEADLINE_S = 30


def sh(argv, timeout=300, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exit {p.returncode}\n{indent(p.stdout)}\n{indent(p.stderr)}")
    return p


def installed_status():
    p = sh(["dpkg-query", "-W", "-f=${Status}|${Maintainer}", "weir"], check=False)
    if p.returncode != 0:
        return None, None
    status, _, maint = p.stdout.partition("|")
    return status, maint


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def systemd_leftovers():
    found = []
    for d in ("/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled",
              "/var/lib/systemd/deb-systemd-helper-masked"):
        for dirpath, _, files in os.walk(d):
            found += [os.path.join(dirpath, f) for f in files if f.startswith("weir.service")]
    return found


def parse_env_file(path):
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blank lines skipped)."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            key, sep, value = line.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
                raise HarnessError(f"{path}: not KEY=VALUE: {line!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key.strip()] = value
    return env


def check_unit(p):
    with open(UNIT) as f:
        text = f.read()
    for line in ("Type=notify", "User=weir", "Group=weir", f"EnvironmentFile=-{ENV_FILE}",
                 f"ExecStart=/usr/bin/weir --config {CONFIG_FILE}", "Restart=on-failure", "StateDirectory=weir",
                 "WantedBy=multi-user.target"):
        p.need(re.search(rf"^{re.escape(line)}$", text, re.M) is not None, f"unit has no line {line}")


def run_installed(report):
    """Start /usr/bin/weir as the unit would, without systemd."""
    pw = pwd.getpwnam("weir")
    tmp = tempfile.mkdtemp(prefix="weir-debian-notify-")
    os.chmod(tmp, 0o755)
    notify_path = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(notify_path)
        os.chmod(notify_path, 0o666)
        env = base_env()
        env.update(parse_env_file(ENV_FILE))
        env["STREAM_MANAGER_SERVER_PORT"] = "0"
        env["NOTIFY_SOCKET"] = notify_path

        def become_weir():
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

        server = Server(["/usr/bin/weir", "--config", CONFIG_FILE], env, STORE, preexec=become_weir)
        try:
            p = Problems()
            sock.settimeout(READY_DEADLINE_S)
            try:
                msg = sock.recv(4096)
            except socket.timeout:
                raise HarnessError(f"no sd_notify datagram within {READY_DEADLINE_S}s:\n{server.tail()}")
            p.need(b"READY=1" in msg.split(b"\n"), f"sd_notify sent {msg!r}, want READY=1")
            server.wait_ready()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10):
                pass
            p.need(server.exe() == "/usr/bin/weir", f"process is {server.exe()}")
            status = open(f"/proc/{server.pid}/status").read()
            uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
            p.need(int(uid) == pw.pw_uid, f"weir runs as uid {uid}, want weir ({pw.pw_uid})")
            token_file = os.path.join(STORE, "auth_token")
            tst = os.stat(token_file)
            p.need(tst.st_uid == pw.pw_uid and (tst.st_mode & 0o777) == 0o600,
                   f"{token_file}: uid {tst.st_uid}, mode {oct(tst.st_mode & 0o777)}")
            err = client_roundtrip(server.port, read_token(STORE), "PackagingDebian")
            p.need(err is None, f"stream_manager 1.1.2 client failed: {err}")
            server.stop()
            streams = os.path.join(STORE, "streams")
            p.need(os.path.isdir(streams) and os.stat(streams).st_uid == pw.pw_uid,
                   f"{streams} missing or not owned by weir")
        except BaseException:
            server.kill()
            raise
        if p:
            report.fail("installed weir started as the unit would", "; ".join(p) + "\n" + server.tail())
        else:
            report.ok("installed weir started as the unit would",
                      f"user weir, READY=1 on NOTIFY_SOCKET, port {server.port}, client served, SIGTERM exit 0")
    finally:
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    report = Report("test_debian")
    if os.geteuid() != 0:
        return skip("test_debian", "dpkg -i, a system user and /var/lib/weir need root")
    for tool in ("dpkg-deb", "dpkg", "adduser", "systemd-analyze"):
        if shutil.which(tool) is None:
            return skip("test_debian", f"{tool} is not installed")
    status, maint = installed_status()
    if status is not None:
        if maint != OUR_MAINTAINER:
            raise HarnessError(f"a package named weir by {maint!r} is installed here; not touching it")
        sh(["dpkg", "-P", "weir"])  # left over by an interrupted run of this test
    if user_exists("weir") or os.path.exists(STORE) or os.path.exists("/etc/weir"):
        raise HarnessError("a user weir, /var/lib/weir or /etc/weir exists without the package; "
                           "the test would install over it and purge it")

    out = tempfile.mkdtemp(prefix="weir-debian-")
    try:
        started = time.monotonic()
        deb = sh([os.path.join(DEB_DIR, "build-deb.sh"), "--binary", weir_binary(), "--out", out,
                  "--compress", "gzip"]).stdout.strip().splitlines()[-1]
        info = sh(["dpkg-deb", "-f", deb]).stdout
        ctrl = tempfile.mkdtemp(dir=out)
        sh(["dpkg-deb", "-e", deb, ctrl])
        p = Problems()
        p.need(os.path.isfile(os.path.join(ctrl, "conffiles")) and open(os.path.join(ctrl, "conffiles")).read().split() == [CONFIG_FILE, ENV_FILE],
               "conffiles is not exactly /etc/weir/weir.toml and /etc/weir/weir.env")
        for s in ("postinst", "prerm", "postrm"):
            p.need(os.access(os.path.join(ctrl, s), os.X_OK), f"no executable {s}")
        p.need(re.search(r"^Depends: .*libc6 \(>= 2\.\d+\).*adduser", info, re.M) is not None, f"Depends in\n{info}")
        p.need(re.search(r"^Package: weir$", info, re.M) is not None, "Package is not weir")
        contents = sh(["dpkg-deb", "-c", deb]).stdout
        for path in ("./usr/bin/weir", "." + UNIT, "." + CONFIG_FILE, "." + ENV_FILE,
                     "./usr/share/doc/weir/copyright"):
            p.need(re.search(rf" {re.escape(path)}$", contents, re.M) is not None, f"{path} not in the package")
        if p:
            report.fail("deb built", "; ".join(p))
            return report.finish()
        report.ok("deb built", f"{os.path.basename(deb)} in {time.monotonic() - started:.0f}s")

        try:
            sh(["dpkg", "-i", deb])
            p = Problems()
            for path in ("/usr/bin/weir", UNIT, CONFIG_FILE, ENV_FILE):
                p.need(os.path.isfile(path), f"{path} not installed")
            p.need(user_exists("weir") and group_exists("weir"), "no user/group weir")
            if user_exists("weir"):
                pw = pwd.getpwnam("weir")
                p.need(pw.pw_uid < 1000, f"weir uid {pw.pw_uid} is not a system uid")
                p.need(pw.pw_shell.endswith("nologin") or pw.pw_shell.endswith("false"), f"weir shell {pw.pw_shell}")
                st = os.stat(STORE)
                p.need(st.st_uid == pw.pw_uid and (st.st_mode & 0o777) == 0o750,
                       f"{STORE}: uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}")
            check_unit(p)
            v = sh(["systemd-analyze", "verify", UNIT], check=False)
            p.need(v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(),
                   f"systemd-analyze verify exit {v.returncode}: {v.stdout}{v.stderr}")
            if p:
                report.fail("dpkg -i", "; ".join(p))
                return report.finish()
            report.ok("dpkg -i", "binary, unit (systemd-analyze verify clean), conffile, system user weir, "
                      f"{STORE} weir:weir 0750")

            run_installed(report)

            sh(["dpkg", "-r", "weir"])
            p = Problems()
            status, _ = installed_status()
            p.need(status == "deinstall ok config-files", f"status after dpkg -r: {status!r}")
            for path in ("/usr/bin/weir", UNIT):
                p.need(not os.path.exists(path), f"{path} still there after dpkg -r")
            for conffile in (CONFIG_FILE, ENV_FILE):
                p.need(os.path.isfile(conffile), f"{conffile} (conffile) gone after dpkg -r")
            p.need(os.path.isdir(os.path.join(STORE, "streams")), f"{STORE} data gone after dpkg -r")
            p.need(user_exists("weir"), "user weir gone after dpkg -r")
            if p:
                report.fail("dpkg -r keeps settings, store and user", "; ".join(p))
            else:
                report.ok("dpkg -r keeps settings, store and user", "binary and unit gone")

            sh(["dpkg", "-P", "weir"])
            p = Problems()
            status, _ = installed_status()
            p.need(status is None or status.startswith("unknown ok not-installed"), f"status after dpkg -P: {status!r}")
            for path in ("/etc/weir", STORE, "/usr/bin/weir", UNIT, "/usr/share/doc/weir"):
                p.need(not os.path.exists(path), f"{path} still there after dpkg -P")
            p.need(not user_exists("weir") and not group_exists("weir"), "user or group weir still there after dpkg -P")
            left = systemd_leftovers()
            p.need(not left, f"service state left after dpkg -P: {left}")
            if p:
                report.fail("dpkg -P removes everything", "; ".join(p))
            else:
                report.ok("dpkg -P removes everything", "settings, store, user, group, enablement links gone")
        finally:
            status, _ = installed_status()
            if status is not None:
                sh(["dpkg", "-P", "weir"], check=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    main_guard(main)
