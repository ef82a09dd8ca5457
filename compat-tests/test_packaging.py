"""Issue 8 packaging: the Greengrass v2 component and the Greengrass v1 java wrapper.

Greengrass v2 (packaging/greengrass-v2/): build-component.sh lays out the
component around the weir binary under test; the recipe it writes is parsed
with PyYAML and checked: name aws.greengrass.StreamManager, a 2.x version,
a HARD dependency on the token exchange service (and none on the Java
nucleus), every configuration key of the genuine component with its default,
the componentmetric accessControl, a nucleus lite manifest (first) and a
classic one, the lite recipe rules (keys spelled exactly, Linux, runtime set,
no Skipif, no shutdown/recover/bootstrap, only the variables lite
substitutes, a numeric-string Timeout), Setenv mapping every key with
{configuration:/KEY}, the artifacts the manifests list present in the layout.
Then each manifest's startup step is run as its nucleus would run it, with no
nucleus: the classic one as `sh -c SCRIPT` with the rendered Setenv as the
environment, the lite one as the shell script lite's recipe runner writes
(`export KEY=value` lines, the script, the systemd-notify lines it appends).
Variables are filled with the recipe's defaults, except the port (0: no fixed
port) and the store folder (a temporary one), as a merge on a device would; a
third run keeps the default store, which (no /greengrass/v2 here) must become
the component's work folder, as on a device with another root.
weir must start from the artifact folder (its /proc/PID/exe is the artifact),
have exactly those variables, serve the stream_manager 1.1.2 SDK, and stop
with status 0 on SIGTERM to its PID. Only a device can check the rest: that
the nucleus resolves and accepts the recipe, artifact permissions, the
startup Timeout against UpdateState(RUNNING), token validation over IPC, TES
credentials.

Greengrass v1 (packaging/greengrass-v1/): install.sh puts the java wrapper
first on PATH (as java8 and java) in front of a fake "real java" that records
its arguments. The v1 command line (`java8 -cp .../AWSGreengrassStreamManager.jar
com.amazonaws.iot.greengrass.streammanager.StreamManagerService`) with a
Lambda-like environment must start weir (exec: same PID) serving a real
client; any other command line must reach the fake java with its arguments
unchanged and its exit status passed back. uninstall.sh removes only the
wrappers; install.sh refuses to replace a file that is not one. No v1 core
is run.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import yaml

from harness import (HERE, READY_RE, HarnessError, Report, _die_with_parent, indent, main_guard,
                     run_client, sdk_python, weir_binary)

ROOT = os.path.abspath(os.path.join(HERE, ".."))
GG2 = os.path.join(ROOT, "packaging", "greengrass-v2")
GG1 = os.path.join(ROOT, "packaging", "greengrass-v1")
SM_PY = sdk_python("py311-stream-manager-1.1.2")
NAME = "aws.greengrass.StreamManager"
START_DEADLINE_S = 30
STOP_DEADLINE_S = 20
CLIENT_DEADLINE_S = 60

# The genuine component's configuration keys and defaults (GREENGRASS.md 1.2);
# "" = not set (the bandwidth is unlimited, JVM_ARGS empty, the old spelling
# of the thread pool key unused).
GENUINE_DEFAULTS = {
    "STREAM_MANAGER_STORE_ROOT_DIR": "/greengrass/v2/work/aws.greengrass.StreamManager",
    "STREAM_MANAGER_SERVER_PORT": "8088",
    "STREAM_MANAGER_AUTHENTICATE_CLIENT": "true",
    "STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH": "",
    "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE": "5",
    "STREAM_MANAGER_THREAD_POOL_SIZE": "",
    "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES": "5242880",
    "LOG_LEVEL": "INFO",
    "JVM_ARGS": "",
}

# Recipe keys as the recipe reference spells them (lite matches them exactly).
TOP_KEYS = {"RecipeFormatVersion", "ComponentName", "ComponentVersion", "ComponentType",
            "ComponentDescription", "ComponentPublisher", "ComponentConfiguration",
            "ComponentDependencies", "Manifests"}
MANIFEST_KEYS = {"Platform", "Lifecycle", "Artifacts", "Name", "Selections"}
PLATFORM_KEYS = {"os", "runtime", "architecture"}
LITE_LIFECYCLE_KEYS = {"Setenv", "install", "run", "startup"}
STEP_KEYS = {"Script", "Timeout", "Setenv", "RequiresPrivilege"}
ARTIFACT_KEYS = {"Uri", "Permission", "Digest", "Algorithm", "Unarchive"}
PERMISSION_KEYS = {"Read", "Execute"}
DEPENDENCY_KEYS = {"VersionRequirement", "DependencyType"}
LITE_VARIABLES = re.compile(r"^(artifacts:path|artifacts:decompressedPath|kernel:rootPath|iot:thingName|"
                            r"work:path|configuration:/[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*)$")
VARIABLE = re.compile(r"\{([^{}]*)\}")

CLIENT = r"""
import os, sys
from stream_manager import StreamManagerClient
from stream_manager.data import MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull
name = sys.argv[1]
c = StreamManagerClient(request_timeout=30)
c.create_message_stream(MessageStreamDefinition(name=name, strategy_on_full=StrategyOnFull.OverwriteOldestData))
payloads = [("%s-%d" % (name, i)).encode() for i in range(3)]
seqs = [c.append_message(name, p) for p in payloads]
msgs = c.read_messages(name, ReadMessagesOptions(desired_start_sequence_number=0, min_message_count=3,
                                                 max_message_count=3, read_timeout_millis=5000))
got = [(m.sequence_number, m.payload) for m in msgs]
want = list(zip(seqs, payloads))
if seqs != [0, 1, 2] or got != want:
    print("MISMATCH seqs=%r got=%r want=%r" % (seqs, got, want))
    sys.exit(1)
assert name in c.list_streams()
c.close()
print("CLIENT OK %d messages" % len(got))
"""


class Problems(list):
    def need(self, cond, msg):
        if not cond:
            self.append(msg)
        return cond


class Server:
    """A process that ends up as weir (maybe through sh and exec), started with
    an exact environment; ready when weir prints its listening line. Stopped
    by its PID."""

    def __init__(self, argv, env, cwd, preexec=None):
        self.lines = []
        self.host = self.port = None
        self._ready = threading.Event()

        def pre():
            _die_with_parent()
            if preexec:
                preexec()

        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     errors="replace", preexec_fn=pre)
        self.pid = self.proc.pid
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = READY_RE.search(line)
            if m and "weir listening on" in line and not self._ready.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._ready.set()

    def wait_ready(self):
        deadline = time.monotonic() + START_DEADLINE_S
        while not self._ready.is_set():
            if self.proc.poll() is not None:
                self._drainer.join(5)
                raise HarnessError(f"exited with {self.proc.returncode} before weir was listening:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise HarnessError(f"weir was not listening within {START_DEADLINE_S}s:\n{self.tail()}")
            self._ready.wait(0.1)
        return self

    def stop(self):
        """SIGTERM to the PID; weir must exit with status 0."""
        if self.proc.poll() is not None:
            raise HarnessError(f"not running at stop time (status {self.proc.returncode}):\n{self.tail()}")
        os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HarnessError(f"did not exit within {STOP_DEADLINE_S}s of SIGTERM:\n{self.tail()}")
        self._drainer.join(5)
        if rc != 0 or any("panicked" in l for l in self.lines):
            raise HarnessError(f"exit status {rc} after SIGTERM (expected 0):\n{self.tail()}")

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, n=30):
        return "\n".join("    weir: " + l for l in self.lines[-n:])

    def exe(self):
        return os.path.realpath(f"/proc/{self.pid}/exe")

    def environ(self):
        with open(f"/proc/{self.pid}/environ", "rb") as f:
            items = [i for i in f.read().split(b"\0") if i]
        return dict(i.decode(errors="replace").split("=", 1) for i in items)


def client_roundtrip(port, token, stream):
    """The stream_manager 1.1.2 SDK: create, three appends, read back, list."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
           "STREAM_MANAGER_SERVER_PORT": str(port)}
    if token is not None:
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
    rc, out, err = run_client([SM_PY, "-c", CLIENT, stream], env, CLIENT_DEADLINE_S)
    if rc != 0 or "CLIENT OK 3 messages" not in out:
        return f"client exit {rc}\n{indent(out)}\n{indent(err[-3000:])}"
    return None


def read_token(store):
    path = os.path.join(store, "auth_token")
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip()]
    if not lines:
        raise HarnessError(f"{path} holds no token")
    return lines[0]


def base_env():
    """What a service manager passes on: a PATH and a locale, nothing of ours."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def machine_arch():
    """The artifact suffix weir-launch.sh picks for this machine (its `uname -m` mapping)."""
    m = os.uname().machine
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8b"):
        return "aarch64"
    if m.startswith("armv7") or m == "armv8l":
        return "armv7"
    if m.startswith("armv6"):
        return "armv6"
    return m


# ------------------------------------------------------------------ Greengrass v2

def build_component(out, version=None, expect_rc=0):
    argv = [os.path.join(GG2, "build-component.sh"), "--out", out]
    if version:
        argv += ["--version", version]
    argv.append(weir_binary())  # its architecture read from the ELF header
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if p.returncode != expect_rc:
        raise HarnessError(f"build-component.sh exit {p.returncode} (expected {expect_rc}):\n{p.stdout}\n{p.stderr}")
    return p


def check_keys(p, where, mapping, allowed):
    if p.need(isinstance(mapping, dict), f"{where} is not a map"):
        extra = set(mapping) - allowed
        p.need(not extra, f"{where}: keys {sorted(extra)} are not recipe keys as lite spells them ({sorted(allowed)})")


def walk_strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def walk_keys(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from walk_keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_keys(v)


def check_recipe(recipe, version, art_dir):
    p = Problems()
    check_keys(p, "recipe", recipe, TOP_KEYS)
    p.need(recipe.get("RecipeFormatVersion") == "2020-01-25", f"RecipeFormatVersion {recipe.get('RecipeFormatVersion')!r}")
    p.need(recipe.get("ComponentName") == NAME, f"ComponentName {recipe.get('ComponentName')!r}")
    v = recipe.get("ComponentVersion")
    p.need(isinstance(v, str) and re.fullmatch(r"2\.\d+\.\d+", v or "") is not None, f"ComponentVersion {v!r} is not 2.x.y")
    p.need(v == version, f"ComponentVersion {v!r}, built as {version}")
    p.need(recipe.get("ComponentType") == "aws.greengrass.generic", f"ComponentType {recipe.get('ComponentType')!r}")

    deps = recipe.get("ComponentDependencies") or {}
    tes = deps.get("aws.greengrass.TokenExchangeService")
    if p.need(isinstance(tes, dict), "no dependency on aws.greengrass.TokenExchangeService"):
        check_keys(p, "TES dependency", tes, DEPENDENCY_KEYS)
        p.need(tes.get("DependencyType") == "HARD", f"TES dependency type {tes.get('DependencyType')!r}, want HARD")
        p.need(isinstance(tes.get("VersionRequirement"), str), "TES dependency has no VersionRequirement")
    p.need("aws.greengrass.Nucleus" not in deps, "depends on aws.greengrass.Nucleus (would pull the Java nucleus onto lite)")

    conf = ((recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration")) or {}
    for key, want in GENUINE_DEFAULTS.items():
        if p.need(key in conf, f"configuration key {key} missing"):
            p.need(isinstance(conf[key], str) and conf[key] == want, f"{key} default {conf[key]!r}, genuine {want!r}")
    extra = set(conf) - set(GENUINE_DEFAULTS) - {"accessControl"}
    p.need(not extra, f"configuration keys the genuine component does not have: {sorted(extra)}")
    acl = (conf.get("accessControl") or {}).get("aws.greengrass.ipc.componentmetric") or {}
    ops = [op for policy in acl.values() for op in (policy or {}).get("operations", [])]
    p.need("aws.greengrass#PutComponentMetric" in ops, f"accessControl for aws.greengrass.ipc.componentmetric: {acl!r}")

    manifests = recipe.get("Manifests") or []
    p.need(len(manifests) == 2, f"{len(manifests)} manifests, want 2 (lite, classic)")
    lite = [m for m in manifests if (m.get("Platform") or {}).get("runtime") in ("aws_nucleus_lite", "*")]
    classic = [m for m in manifests if "runtime" not in (m.get("Platform") or {})
               or (m.get("Platform") or {}).get("runtime") in ("aws_nucleus_classic", "*")]
    if not p.need(len(lite) >= 1 and len(classic) >= 1, "want a lite manifest and a classic manifest"):
        return p, None, None
    lite, classic = lite[0], classic[-1]
    p.need(manifests.index(lite) < manifests.index(classic) or lite is classic,
           "the lite manifest must come first (a device takes the first that matches)")

    wanted_env = {k: "{configuration:/%s}" % k for k in GENUINE_DEFAULTS}
    for label, m in (("lite", lite), ("classic", classic)):
        check_keys(p, f"{label} manifest", m, MANIFEST_KEYS)
        check_keys(p, f"{label} Platform", m.get("Platform") or {}, PLATFORM_KEYS)
        p.need((m.get("Platform") or {}).get("os") == "linux", f"{label} manifest: os {(m.get('Platform') or {}).get('os')!r}")
        lc = m.get("Lifecycle") or {}
        check_keys(p, f"{label} Lifecycle", lc, LITE_LIFECYCLE_KEYS)
        step = lc.get("startup")
        if p.need(isinstance(step, dict), f"{label}: no startup step (readiness = UpdateState RUNNING)"):
            check_keys(p, f"{label} startup", step, STEP_KEYS)
            p.need(isinstance(step.get("Script"), str), f"{label} startup has no Script")
            t = step.get("Timeout")
            p.need(isinstance(t, str) and t.isdigit() and int(t) > 0,
                   f"{label} startup Timeout {t!r}: want a positive integer as a string (lite refuses other types)")
        p.need("run" not in lc, f"{label}: a run step as well as startup")
        env = dict(lc.get("Setenv") or {})
        env.update((step or {}).get("Setenv") or {})
        want = dict(wanted_env)
        if label == "lite":
            # lite writes Setenv unquoted into a shell script: JVM_ARGS (spaces) is quoted in Script.
            want.pop("JVM_ARGS")
            p.need("JVM_ARGS='{configuration:/JVM_ARGS}'" in (step or {}).get("Script", ""),
                   "lite startup Script does not pass JVM_ARGS quoted")
        p.need(env == want, f"{label} Setenv {env!r}\n    want {want!r}")
        arts = m.get("Artifacts") or []
        names = []
        for a in arts:
            check_keys(p, f"{label} artifact", a, ARTIFACT_KEYS)
            check_keys(p, f"{label} artifact Permission", a.get("Permission") or {}, PERMISSION_KEYS)
            uri = a.get("Uri", "")
            p.need(uri.endswith(f"/{NAME}/{version}/" + uri.rsplit("/", 1)[-1]), f"{label} artifact Uri {uri!r}")
            fname = uri.rsplit("/", 1)[-1]
            names.append(fname)
            p.need(os.path.isfile(os.path.join(art_dir, fname)), f"{label}: artifact {fname} not in {art_dir}")
            if fname.startswith("weir-") and fname != "weir-launch.sh":
                p.need((a.get("Permission") or {}).get("Execute") == "OWNER", f"{label}: {fname} not Execute: OWNER")
        p.need("weir-launch.sh" in names and f"weir-{machine_arch()}" in names,
               f"{label} artifacts {names}: want weir-launch.sh and weir-{machine_arch()}")

    # Lite's rules, over the whole lite manifest.
    for k in walk_keys(lite):
        p.need(k.lower() != "skipif", "lite manifest has a Skipif")
    lc = lite.get("Lifecycle") or {}
    for step in ("shutdown", "recover", "bootstrap"):
        p.need(not any(k.lower() == step for k in lc), f"lite manifest has a {step} step (lite does not run it)")
    for path, s in walk_strings(lite):
        for var in VARIABLE.findall(s):
            p.need(LITE_VARIABLES.match(var) is not None, f"lite manifest {path}: variable {{{var}}} is not one lite substitutes")
            if var.startswith("configuration:/"):
                p.need(var[len("configuration:/"):] in conf, f"lite manifest {path}: {{{var}}} names no configuration key")
    for path, s in walk_strings(classic):
        for var in VARIABLE.findall(s):
            if var.startswith("configuration:/"):
                p.need(var[len("configuration:/"):] in conf, f"classic manifest {path}: {{{var}}} names no configuration key")
    return p, lite, classic


def check_mutations(report, recipe, art_dir):
    """The checker itself: each way a recipe can break a rule must be caught."""
    import copy

    def lite_of(r):
        return r["Manifests"][0]

    mutations = {
        "a Skipif in the lite startup": lambda r: lite_of(r)["Lifecycle"]["startup"].update(Skipif="onpath java"),
        "a lower-case key (lite matches exactly)": lambda r: lite_of(r)["Lifecycle"]["startup"].update(
            script=lite_of(r)["Lifecycle"]["startup"].pop("Script")),
        "a {kernel:...} variable lite lacks": lambda r: lite_of(r)["Lifecycle"]["Setenv"].update(
            LOG_LEVEL="{configuration:/LOG_LEVEL}{kernel:javaPath}"),
        "a dependency: prefix": lambda r: lite_of(r)["Lifecycle"]["Setenv"].update(
            LOG_LEVEL="{aws.greengrass.Nucleus:configuration:/logging/level}"),
        "a numeric Timeout": lambda r: lite_of(r)["Lifecycle"]["startup"].update(Timeout=120),
        "a changed default": lambda r: r["ComponentConfiguration"]["DefaultConfiguration"].update(
            STREAM_MANAGER_SERVER_PORT="8089"),
        "a SOFT TES dependency": lambda r: r["ComponentDependencies"]["aws.greengrass.TokenExchangeService"].update(
            DependencyType="SOFT"),
        "version 3.0.0": lambda r: r.update(ComponentVersion="3.0.0"),
        "no lite manifest": lambda r: r["Manifests"].pop(0),
        "a shutdown step in lite": lambda r: lite_of(r)["Lifecycle"].update(shutdown={"Script": "true"}),
        "a Setenv key missing": lambda r: lite_of(r)["Lifecycle"]["Setenv"].pop("LOG_LEVEL"),
    }
    missed = []
    for what, mutate in mutations.items():
        r = copy.deepcopy(recipe)
        mutate(r)
        problems, _, _ = check_recipe(r, "2.9.0", art_dir)
        if not problems:
            missed.append(what)
    if missed:
        report.fail("gg2 recipe checker catches broken recipes", f"not caught: {missed}")
    else:
        report.ok("gg2 recipe checker catches broken recipes", f"{len(mutations)} mutations caught")


def render(text, config, art_dir, work_dir, root):
    def sub(m):
        var = m.group(1)
        if var.startswith("configuration:/"):
            return str(config[var[len("configuration:/"):]])
        return {"artifacts:path": art_dir, "artifacts:decompressedPath": art_dir, "work:path": work_dir,
                "kernel:rootPath": root, "iot:thingName": "weir-test-thing"}[var]
    return VARIABLE.sub(sub, text)


def merged_config(defaults, **overrides):
    conf = {k: v for k, v in defaults.items() if k != "accessControl"}
    conf.update(overrides)
    return conf


def run_manifest(report, case, kind, manifest, defaults, tmp, art_dir, jvm_args, default_store=False):
    """Runs the manifest's startup step as its nucleus would, then a client.

    default_store: keep the genuine default store folder; with no /greengrass/v2
    on this machine weir-launch.sh must use the work folder instead."""
    work = os.path.join(tmp, f"work-{kind}-{int(default_store)}")
    os.makedirs(work)
    overrides = {"STREAM_MANAGER_SERVER_PORT": "0", "JVM_ARGS": jvm_args}
    if default_store:
        store = work if not os.path.isdir("/greengrass/v2") else defaults["STREAM_MANAGER_STORE_ROOT_DIR"]
    else:
        store = overrides["STREAM_MANAGER_STORE_ROOT_DIR"] = os.path.join(tmp, f"store-{kind}")
    config = merged_config(defaults, **overrides)
    lc = manifest["Lifecycle"]
    step = lc["startup"]
    setenv = dict(lc.get("Setenv") or {})
    setenv.update(step.get("Setenv") or {})
    rendered = {k: render(v, config, art_dir, work, tmp) for k, v in setenv.items()}
    script = render(step["Script"], config, art_dir, work, tmp)
    env = base_env()
    if kind == "classic":
        # The Java nucleus: Setenv becomes the process environment, the script runs with sh -c.
        env.update(rendered)
        argv = ["sh", "-c", script]
        expected_env = dict(rendered)
    else:
        # Lite's recipe runner: `export KEY=value` lines (unquoted), the script, and the two
        # systemd-notify lines it appends after a startup script.
        lines = [f"export {k}={v}" for k, v in rendered.items()]
        path = os.path.join(tmp, f"lite-{kind}.sh")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n" + script + "\nsystemd-notify --ready\nsystemd-notify --stopping\n")
        argv = ["sh", path]
        expected_env = {k: v for k, v in rendered.items()}
        expected_env["JVM_ARGS"] = jvm_args
    expected_env["STREAM_MANAGER_STORE_ROOT_DIR"] = store
    server = Server(argv, env, work)
    try:
        server.wait_ready()
        p = Problems()
        exe = server.exe()
        p.need(exe == os.path.realpath(os.path.join(art_dir, f"weir-{machine_arch()}")),
               f"the process is {exe}, not the artifact weir-{machine_arch()}")
        got = server.environ()
        for k, v in expected_env.items():
            p.need(got.get(k, "") == v, f"weir's {k}={got.get(k)!r}, the recipe gives {v!r}")
        p.need(server.host == "127.0.0.1", f"listening on {server.host}")
        warned = any("JVM_ARGS is set" in l for l in server.lines)
        p.need(warned == bool(jvm_args), f"JVM_ARGS {jvm_args!r}: warning printed={warned}")
        err = client_roundtrip(server.port, read_token(store), f"Packaging{kind.capitalize()}")
        p.need(err is None, f"stream_manager 1.1.2 client failed: {err}")
        server.stop()
    except BaseException:
        server.kill()
        raise
    if p:
        report.fail(case, "; ".join(p) + "\n" + server.tail())
    else:
        report.ok(case, f"pid {server.pid} = {os.path.basename(exe)}, port {server.port}, JVM_ARGS {jvm_args!r}, "
                  f"store {'the work folder' if store == work else store}")


def test_greengrass_v2(report):
    tmp = tempfile.mkdtemp(prefix="weir-packaging-gg2-")
    try:
        out = os.path.join(tmp, "component")
        build_component(out)
        recipe_path = os.path.join(out, "recipes", f"{NAME}-2.9.0.yaml")
        art_dir = os.path.join(out, "artifacts", NAME, "2.9.0")
        if not os.path.isfile(recipe_path):
            report.fail("gg2 layout", f"no recipe at {recipe_path}")
            return
        report.ok("gg2 layout", f"recipes/{NAME}-2.9.0.yaml, artifacts/{NAME}/2.9.0/: "
                  + ", ".join(sorted(os.listdir(art_dir))))
        refused = build_component(os.path.join(tmp, "bad"), version="1.1.0", expect_rc=2)
        report.ok("gg2 build refuses a 1.x version", refused.stderr.strip().splitlines()[-1])

        with open(recipe_path) as f:
            recipe = yaml.safe_load(f)
        p, lite, classic = check_recipe(recipe, "2.9.0", art_dir)
        if p:
            report.fail("gg2 recipe", "\n    ".join(p))
            return
        report.ok("gg2 recipe", "name, version 2.9.0, TES HARD, genuine keys and defaults, accessControl, "
                  "lite + classic manifests, lite rules, Setenv, artifacts")
        check_mutations(report, recipe, art_dir)
        defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
        run_manifest(report, "gg2 classic startup serves a client", "classic", classic, defaults, tmp, art_dir, "")
        run_manifest(report, "gg2 lite startup serves a client", "lite", lite, defaults, tmp, art_dir,
                     "-Xmx64m -Daws.s3UseUsEast1RegionalEndpoint=regional")
        if os.path.isdir("/greengrass/v2"):
            report.fail("gg2 default store without /greengrass/v2", "this machine has /greengrass/v2; cannot check")
        else:
            run_manifest(report, "gg2 default store without /greengrass/v2 is the work folder", "lite", lite,
                         defaults, tmp, art_dir, "", default_store=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ Greengrass v1

FAKE_JAVA = """#!/bin/sh
# a fake "real java": records its name and arguments (NUL-separated) and exits 3
printf '%s\\0' "$(basename "$0")" "$@" > "$FAKE_JAVA_LOG"
exit 3
"""

V1_JAR = "/greengrass/ggc/packages/1.11.6/lambda/GGStreamManager/AWSGreengrassStreamManager.jar"


def test_greengrass_v1(report):
    tmp = tempfile.mkdtemp(prefix="weir-packaging-gg1-")
    try:
        wrap_dir = os.path.join(tmp, "wrappers")
        real_dir = os.path.join(tmp, "jdk", "bin")
        os.makedirs(wrap_dir)
        os.makedirs(real_dir)
        for n in ("java8", "java"):
            with open(os.path.join(real_dir, n), "w") as f:
                f.write(FAKE_JAVA)
            os.chmod(os.path.join(real_dir, n), 0o755)
        path = f"{wrap_dir}:{real_dir}:/usr/bin:/bin"
        inst = subprocess.run([os.path.join(GG1, "install.sh"), "--bin-dir", wrap_dir, "--weir", weir_binary()],
                              env={"PATH": path}, capture_output=True, text=True, timeout=60)
        if inst.returncode != 0:
            report.fail("gg1 install", f"install.sh exit {inst.returncode}\n{inst.stdout}{inst.stderr}")
            return
        real_java = os.path.join(real_dir, "java8")
        for n in ("java8", "java"):
            with open(os.path.join(wrap_dir, n)) as f:
                wrapper = f.read()
            if f'"${{WEIR_GG1_REAL_JAVA:-{os.path.join(real_dir, n)}}}"' not in wrapper or weir_binary() not in wrapper:
                report.fail("gg1 install", f"wrapper {n} does not name {os.path.join(real_dir, n)} and {weir_binary()}:\n{wrapper}")
                return
        report.ok("gg1 install", f"java8 and java in {os.path.basename(wrap_dir)}/ -> weir, else the real one of each name")

        # The stream manager's command line, with a Lambda's environment.
        store = os.path.join(tmp, "store")
        log = os.path.join(tmp, "fake-java.args")
        env = {"PATH": path, "LANG": "C.UTF-8", "FAKE_JAVA_LOG": log,
               "STREAM_MANAGER_SERVER_PORT": "0", "STREAM_MANAGER_STORE_ROOT_DIR": store,
               "STREAM_MANAGER_AUTHENTICATE_CLIENT": "true",
               "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE": "5",
               "MY_FUNCTION_ARN": "arn:aws:lambda:::function:GGStreamManager:1",
               "GG_DAEMON_PORT": "8000",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://localhost:8000/2016-11-01/credentialprovider/",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "v1-lambda-token"}
        argv = ["java8", "-Xmx128m", "-cp", V1_JAR, "com.amazonaws.iot.greengrass.streammanager.StreamManagerService"]
        server = Server(argv, env, tmp)
        try:
            server.wait_ready()
            p = Problems()
            p.need(server.exe() == os.path.realpath(weir_binary()), f"process is {server.exe()}, not weir")
            got = server.environ()
            for k in ("STREAM_MANAGER_STORE_ROOT_DIR", "MY_FUNCTION_ARN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"):
                p.need(got.get(k) == env[k], f"weir's {k}={got.get(k)!r}, want {env[k]!r}")
            err = client_roundtrip(server.port, read_token(store), "PackagingV1")
            p.need(err is None, f"stream_manager 1.1.2 client failed: {err}")
            p.need(not os.path.exists(log), "the fake real java ran for the stream manager's command line")
            server.stop()
        except BaseException:
            server.kill()
            raise
        if p:
            report.fail("gg1 wrapper runs weir for StreamManagerService", "; ".join(p) + "\n" + server.tail())
        else:
            report.ok("gg1 wrapper runs weir for StreamManagerService", f"pid {server.pid} is weir, port {server.port}")

        # Any other Java Lambda: the real JVM, arguments unchanged, exit status passed back.
        for name in ("java", "java8"):
            args = ["-Djava.io.tmpdir=/tmp/x y", "-cp", V1_JAR + ":/lambda/hello.jar",
                    "com.example.HelloLambda", "arg with  spaces", "", "com.amazonaws.x.StreamManagerServiceX"]
            r = subprocess.run([name] + args, env=env, capture_output=True, timeout=60)
            recorded = open(log, "rb").read().split(b"\0")[:-1] if os.path.exists(log) else None
            if r.returncode == 3 and recorded == [a.encode() for a in [name] + args]:
                report.ok(f"gg1 wrapper passes {name} {args[3]} to the real JVM", f"the real {name}, arguments unchanged, exit status 3")
            else:
                report.fail(f"gg1 wrapper passes {name} {args[3]} to the real JVM",
                            f"exit {r.returncode}, recorded {recorded!r}, want {[name] + args!r}\n{r.stderr.decode(errors='replace')}")
            if os.path.exists(log):
                os.remove(log)

        # install.sh never replaces a file that is not its wrapper; uninstall.sh removes only its own.
        other = os.path.join(tmp, "other")
        os.makedirs(other)
        with open(os.path.join(other, "java8"), "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        refuse = subprocess.run([os.path.join(GG1, "install.sh"), "--bin-dir", other, "--weir", weir_binary(),
                                 "--real-java", real_java], env={"PATH": path}, capture_output=True, text=True, timeout=60)
        un = subprocess.run([os.path.join(GG1, "uninstall.sh"), "--bin-dir", wrap_dir], env={"PATH": path},
                            capture_output=True, text=True, timeout=60)
        un_other = subprocess.run([os.path.join(GG1, "uninstall.sh"), "--bin-dir", other], env={"PATH": path},
                                  capture_output=True, text=True, timeout=60)
        p = Problems()
        p.need(refuse.returncode != 0, "install.sh replaced a java8 that is not its wrapper")
        p.need(un.returncode == 0 and not os.listdir(wrap_dir), f"uninstall.sh left {os.listdir(wrap_dir)}: {un.stderr}")
        p.need(un_other.returncode == 0 and os.path.exists(os.path.join(other, "java8")),
               "uninstall.sh removed a java8 that is not its wrapper")
        p.need(sorted(os.listdir(real_dir)) == ["java", "java8"], "the real java was touched")
        if p:
            report.fail("gg1 install/uninstall leave other files alone", "; ".join(p))
        else:
            report.ok("gg1 install/uninstall leave other files alone", "refused to replace, removed only the wrappers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sd_notify_abstract(report):
    """READY=1 to an abstract NOTIFY_SOCKET (`@name`), as some service managers pass it;
    test_debian.py checks a path socket."""
    import secrets
    name = f"weir-test-notify-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tmp = tempfile.mkdtemp(prefix="weir-packaging-notify-")
    try:
        sock.bind("\0" + name)
        env = base_env()
        env.update({"STREAM_MANAGER_SERVER_PORT": "0", "STREAM_MANAGER_STORE_ROOT_DIR": os.path.join(tmp, "store"),
                    "NOTIFY_SOCKET": "@" + name})
        server = Server([weir_binary()], env, tmp)
        try:
            sock.settimeout(START_DEADLINE_S)
            try:
                msg = sock.recv(4096)
            except socket.timeout:
                raise HarnessError(f"no sd_notify datagram within {START_DEADLINE_S}s:\n{server.tail()}")
            server.wait_ready()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10):
                pass
            server.stop()
        except BaseException:
            server.kill()
            raise
        if b"READY=1" in msg.split(b"\n"):
            report.ok("sd_notify READY=1 to an abstract socket", f"{msg!r}, then the port accepted a connection")
        else:
            report.fail("sd_notify READY=1 to an abstract socket", f"got {msg!r}")
    finally:
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    report = Report("test_packaging")
    test_greengrass_v2(report)
    test_greengrass_v1(report)
    test_sd_notify_abstract(report)
    return report.finish()


if __name__ == "__main__":
    main_guard(main)
