"""Item 7b: the conformance cases, run with every real SDK, each against its own fresh weir.

The per-SDK programs (conformance.py / conformance.js) print one line per case;
this driver checks that the output is well formed (every line is a case result,
the summary agrees with them, exit status agrees), forwards the lines, and
prints a per-SDK PASS/FAIL count. Under CI=true a skipped case is a failure.
"""
import os
import re

from harness import HERE, HarnessError, Weir, in_ci, indent, main_guard, run_client, sdk_python

SDKS = [
    # (label, argv)
    ("greengrasssdk-1.5.0/py3.7 (protocol 1.0.0)",
     [sdk_python("py37-greengrasssdk-1.5.0"), os.path.join(HERE, "conformance.py"), "greengrasssdk.stream_manager"]),
    ("greengrasssdk-1.6.1/py3.11 (protocol 1.1.0)",
     [sdk_python("py311-greengrasssdk-1.6.1"), os.path.join(HERE, "conformance.py"), "greengrasssdk.stream_manager"]),
    ("stream-manager-1.1.2/py3.11 (protocol 1.1.0)",
     [sdk_python("py311-stream-manager-1.1.2"), os.path.join(HERE, "conformance.py"), "stream_manager"]),
    ("aws-greengrass-core-sdk-1.7.0/node (protocol 1.1.0)",
     ["node", os.path.join(HERE, "conformance.js")]),
]
RESULT_RE = re.compile(r"(PASS|FAIL|SKIP) (\S+)(.*)")
SUMMARY_RE = re.compile(r"SUMMARY pass=(\d+) fail=(\d+) skip=(\d+)")
PROGRAM_DEADLINE_S = 240


def run_sdk(label, argv):
    """Returns (passed, failed, skipped, problems) for one SDK."""
    with Weir("conformance") as weir:
        rc, out, err = run_client(argv, weir.client_env(), PROGRAM_DEADLINE_S)
        weir_log = weir.log_tail(60)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    problems = []
    summary = None
    for line in out.splitlines():
        m = RESULT_RE.fullmatch(line)
        if m:
            counts[m.group(1)] += 1
            print(f"  [{label.split('/')[0]}] {line}", flush=True)
            continue
        m = SUMMARY_RE.fullmatch(line)
        if m and summary is None:
            summary = tuple(int(x) for x in m.groups())
            continue
        problems.append(f"unexpected output line {line!r}")
    if summary is None:
        problems.append("no SUMMARY line (program crashed?)")
    elif summary != (counts["PASS"], counts["FAIL"], counts["SKIP"]):
        problems.append(f"SUMMARY {summary} disagrees with the case lines {counts}")
    if (rc == 0) != (counts["FAIL"] == 0 and not problems):
        problems.append(f"exit status {rc} with {counts['FAIL']} failed cases")
    if counts["PASS"] == 0:
        problems.append("no case passed")
    skipped = max(counts["SKIP"], summary[2] if summary else 0)
    if skipped and in_ci():
        problems.append(f"{skipped} cases skipped; under CI=true a skip is a failure")
    if counts["FAIL"] or problems:
        print(f"  [{label}] client stderr tail:\n{indent(err[-4000:])}\n  weir log tail:\n{weir_log}", flush=True)
    return counts["PASS"], counts["FAIL"], counts["SKIP"], problems


def main():
    results = []
    for label, argv in SDKS:
        print(f"-- conformance with {label}", flush=True)
        try:
            results.append((label,) + run_sdk(label, argv))
        except HarnessError as e:
            print(f"  HARNESS ERROR: {e}", flush=True)
            results.append((label, 0, 0, 0, [f"harness error: {str(e).splitlines()[0]}"]))
    print("== conformance summary", flush=True)
    bad = False
    for label, p, f, s, problems in results:
        ok = f == 0 and not problems
        bad |= not ok
        print(f"  {'OK  ' if ok else 'FAIL'} {label}: {p} passed, {f} failed, {s} skipped"
              + "".join(f"\n       problem: {x}" for x in problems), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    main_guard(main)
