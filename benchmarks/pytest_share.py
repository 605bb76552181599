"""pytest's share of a `pytest dataset_checks` run at 20,000 identities.

    python benchmarks/pytest_share.py [--workdir DIR] [--identities 20000] [--cases default,line,passing,nohtml]
                                      [--profile CASE] [--browser]

Generates (once per --workdir) two datasets of `--identities` FACE01 folders with few, 64-d
vectors, so that loading and the search are cheap and pytest dominates: one with planted
cross-folder copies (about 20% of the identities fail), one with none (all pass). Each case runs
`pytest dataset_checks` in a child process with a fixed threshold and prints:

* wall: the whole child process, interpreter start included; cpu: its user + system time (on a
  shared machine the steadier of the two; BLAS threads make it exceed wall in the search);
* stages: the pipeline's stages (findings.json metadata `timings`: discover, load, search, ...);
* pytest share: wall - stages (collection, running the tests, terminal output, report.html,
  our hooks, the findings files, startup), and the same per identity in ms;
* pytest cpu: the child's CPU time minus the pipeline's (measured inside the child by
  `_cpu_probe.py`), per identity in ms: on a shared machine, where a loaded CPU stretches wall
  time 1.5-3x, the steadier number to compare;
* report.html's size, its failing and passing rows, and (--browser) the time headless Chromium
  takes to load it and run its scripts.

Cases: `default` (default options, report.html in the report dir), `line` (--tb=line),
`passing` (the dataset without planted copies), `nohtml` (-p no:html: no report.html), and
`floor`: plain pytest running as many trivial parametrized tests, no plugin of ours, no
report.html (what pytest itself costs per test on this machine: the share cannot go below it).
`--profile CASE` also runs that case under cProfile and prints the top functions by cumulative
and by own time.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

THRESHOLD = 0.85
CASES = {
    "default": ("planted", []),
    "line": ("planted", ["--tb=line"]),
    "passing": ("clean", []),
    "nohtml": ("planted", ["-p", "no:html"]),
    "floor": (None, []),
}
FLOOR_TEST = """import pytest


@pytest.mark.parametrize("identity", range({n}))
def test_identity(identity):
    pass
"""


def generate(root: Path, identities: int, planted: bool) -> None:
    """`identities` folders, ~4 64-d faces each; planted: copies across folders (~20% fail)."""
    from dataset_checks.synthetic import seed_scale

    if (root / ".complete").is_file():
        return
    t0 = time.perf_counter()
    ds = seed_scale(n_identities=identities, n_vectors=4 * identities, dim=64,
                    n_planted=identities * 3 // 20 if planted else 0, crowded_every=0, seed=1)
    ds.write(root)
    (root / ".complete").write_text("")
    print(f"wrote {root}: {identities} folders, {4 * identities} vectors in {time.perf_counter() - t0:.0f} s",
          flush=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child(cmd: list[str], cwd: Path, probe: Path, src: Path | None) -> tuple[subprocess.CompletedProcess, float, float, dict]:
    """Run one child; its wall time, its CPU time (user + system, all threads) and the probe's numbers."""
    paths = [str(src) if src else None, str(HERE), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "PYTEST_SHARE_PROBE": str(probe)}
    probe.unlink(missing_ok=True)
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run([*cmd, "-p", "_cpu_probe"], capture_output=True, text=True, cwd=cwd, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    seen = json.loads(probe.read_text()) if probe.is_file() else {}
    return proc, wall, cpu, seen


def run_case(work: Path, name: str, profile: bool = False, src: Path | None = None) -> dict:
    """One child run; `src`: a folder holding another `dataset_checks` package to run instead
    (put first on PYTHONPATH: `git archive <commit> dataset_checks | tar -x -C DIR` for a before/after)."""
    data, extra = CASES[name]
    if data is None:
        return run_floor(work)
    out = work / f"out-{name}{'-prof' if profile else ''}{'-' + src.name if src else ''}"
    out.mkdir(parents=True, exist_ok=True)
    rules = work / "rules.yaml"
    rules.write_text(f"threshold: {THRESHOLD}\n")
    pre = [sys.executable]
    if profile:
        pre += ["-m", "cProfile", "-o", str(out / "profile.out")]
    cmd = [*pre, "-m", "pytest", "dataset_checks", "-p", "no:randomly", "-p", "no:cacheprovider",
           "--dataset", str(work / data), "--rules", str(rules), "--report-dir", str(out), *extra]
    proc, wall, cpu, seen = _child(cmd, work, work / f"probe-{out.name}.json", src)
    meta = json.loads((out / "findings.json").read_text())
    stages = sum(meta.get("timings", {}).values())
    n = meta["counts"]["identities"]
    share_cpu = cpu - seen.get("pipeline_cpu", 0.0)
    html = out / "report.html"
    row = {"case": name, "rc": proc.returncode, "wall": wall, "cpu": cpu, "stages": stages, "share": wall - stages,
           "ms_per_identity": (wall - stages) / n * 1000, "share_cpu": share_cpu,
           "cpu_ms_per_identity": share_cpu / n * 1000, "identities": n,
           "stdout_lines": proc.stdout.count("\n"), "stdout_kb": len(proc.stdout) / 1e3}
    if html.is_file():
        text = html.read_text(encoding="utf-8")
        row["html_mb"] = html.stat().st_size / 1e6
        row["html_imgs"] = len(re.findall(r"data:image/", text))
    (out / "stdout.txt").write_text(proc.stdout + proc.stderr)
    if profile:
        row["profile"] = out / "profile.out"
    return row


def run_floor(work: Path) -> dict:
    n = len([p for p in (work / "planted").iterdir() if p.is_dir()])
    test = work / "floor" / "test_floor.py"
    test.parent.mkdir(exist_ok=True)
    test.write_text(FLOOR_TEST.format(n=n))
    cmd = [sys.executable, "-m", "pytest", str(test), "-p", "no:randomly", "-p", "no:cacheprovider",
           "-p", "no:dataset_checks", "--rootdir", str(test.parent)]
    proc, wall, cpu, _ = _child(cmd, test.parent, work / "probe-floor.json", None)
    return {"case": "floor", "rc": proc.returncode, "wall": wall, "cpu": cpu, "stages": 0.0, "share": wall,
            "ms_per_identity": wall / n * 1000, "share_cpu": cpu, "cpu_ms_per_identity": cpu / n * 1000,
            "identities": n, "stdout_lines": proc.stdout.count("\n")}


def browser(html: Path) -> dict[str, float]:
    """Headless Chromium on report.html: browser start alone, load + scripts + first screen
    (screenshot), and load + scripts + the whole DOM as text (--dump-dom, as report_size.py)."""
    from report_size import chromium_seconds

    blank = html.with_name("blank.html")
    blank.write_text("<html><body>x</body></html>")
    return {"start": chromium_seconds(blank, "screenshot"), "screenshot": chromium_seconds(html, "screenshot"),
            "dump-dom": chromium_seconds(html, "dump-dom")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--identities", type=int, default=20_000)
    ap.add_argument("--cases", default="default,line,passing,nohtml")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--src", type=Path, action="append", default=[],
                    help="also run each case with the dataset_checks package in this folder (repeatable), "
                         "alternating with this checkout's")
    ap.add_argument("--profile", default=None, help="a case to run under cProfile as well")
    ap.add_argument("--browser", action="store_true", help="time headless Chromium loading the default report")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pytest_share_"))
    work.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    if any(CASES[c][0] in ("planted", None) for c in cases) or args.profile:
        generate(work / "planted", args.identities, True)
    if any(CASES[c][0] == "clean" for c in cases):
        generate(work / "clean", args.identities, False)
    print(f"{'case':20} {'rc':>2} {'wall s':>7} {'cpu s':>6} {'stages s':>8} {'pytest s':>8} {'ms/id':>6} "
          f"{'pytest cpu s':>12} {'cpu ms/id':>9} {'html MB':>7} {'stdout':>14}")
    runs = [(name, src) for name in cases for src in [None, *args.src] if src is None or CASES[name][0]]
    for _ in range(args.repeat):
        for name, src in runs:
            r = run_case(work, name, src=src)
            html = f"{r['html_mb']:7.2f}" if "html_mb" in r else f"{'-':>7}"
            label = name if src is None else f"{name}@{src.name}"
            print(f"{label:20} {r['rc']:>2} {r['wall']:7.1f} {r['cpu']:6.1f} {r['stages']:8.1f} {r['share']:8.1f} "
                  f"{r['ms_per_identity']:6.2f} {r['share_cpu']:12.1f} {r['cpu_ms_per_identity']:9.2f} {html} "
                  f"{r['stdout_lines']:>6} lines", flush=True)
    if args.browser:
        for src in [None, *args.src]:
            html = work / f"out-default{'-' + src.name if src else ''}" / "report.html"
            if not html.is_file():
                continue
            t = browser(html)
            print(f"headless Chromium on {html.parent.name}/report.html: load + scripts + first screen "
                  f"{t['screenshot']:.1f} s, + whole DOM dumped {t['dump-dom']:.1f} s "
                  f"(browser start alone {t['start']:.1f} s)", flush=True)
    if args.profile:
        r = run_case(work, args.profile, profile=True)
        print(f"\nprofile of {args.profile} ({r['wall']:.1f} s wall under cProfile): {r['profile']}")
        stats = pstats.Stats(str(r["profile"]))
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
