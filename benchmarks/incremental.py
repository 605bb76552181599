"""Incremental runs at scale: a full run, then a commit adding faces, then one removing faces.

A copy of the dataset is made under --workdir (the source is never written; folders this
script changed are restored from the source at the start of every invocation), then each step
runs `pytest dataset_checks` as a child process on the same cache:

1. `full`: a fresh cache: every archive read, the whole search, the search state written;
2. `add`: --faces new faces appended to --folders folders (copies of faces of other folders
   with a little noise, so that they make new cross-folder pairs; each folder's npKnown.npz is
   written as a new file and renamed into place);
3. `remove`: --faces faces removed from --folders other folders;
4. `checkout` (only when asked, --steps ...,checkout): every archive gets a new mtime and
   nothing else, as in a fresh CI checkout with the search state restored from the CI cache:
   every folder is read again and every face hashed, and none is searched;
5. `--full`: the same dataset as the last step, searched in full, to compare its findings with
   the incremental run's (pairs of findings.csv).

Per step: the mode and reason (findings.json `incremental`), faces searched, the search's
seconds, the run's own stages (findings.json timings), wall time and peak RSS of the child,
and pytest's share (wall minus the run's stages: collection, 20,000 test items, reports).

    python benchmarks/incremental.py --source /tmp/big1m --workdir /tmp/incr_1m
    python benchmarks/incremental.py --size 100000 --workdir /tmp/incr_100k   # generated
    # then, on the same cache and dataset, with every check off (the search and pytest alone):
    python benchmarks/incremental.py --source /tmp/big1m --workdir /tmp/incr_1m --steps add,remove \
        --no-checks --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale import read_pairs  # noqa: E402
from seed_scale import run_child  # noqa: E402

KEY = "efficientnetv2_arcface"


def prepare_copy(source: Path, dataset: Path, changed: list[str]) -> None:
    """dataset = a copy of source; folders a previous invocation changed are copied again."""
    if not dataset.is_dir():
        t0 = time.perf_counter()
        shutil.copytree(source, dataset, symlinks=True)
        print(f"  copied {source} in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in changed:
        shutil.rmtree(dataset / name, ignore_errors=True)
        shutil.copytree(source / name, dataset / name)


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "npKnown.npz") as z:
        return z["name"].copy(), z[KEY].copy()


def write_folder(folder: Path, names: np.ndarray, vectors: np.ndarray) -> None:
    """A new file renamed over the old one: never rewrites the old file in place (the copy may
    share it with the source through a hard link)."""
    tmp = folder / ".npKnown.new.npz"
    np.savez(tmp, name=names, **{KEY: vectors})
    os.replace(tmp, folder / "npKnown.npz")


def pick(dataset: Path, folders: int, faces: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(folders to add to, folders to remove from (holding more than their share of the faces
    removed), folders whose faces are copied)."""
    names = sorted(p.name for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
    order = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
    add, donors = order[:folders], order[folders : 2 * folders]
    per = -(-faces // folders)
    remove = []
    for name in order[2 * folders :]:
        if len(remove) == folders:
            break
        if len(read_folder(dataset / name)[0]) > per:
            remove.append(name)
    return add, remove, donors


def add_faces(dataset: Path, targets: list[str], donors: list[str], faces: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    per = [faces // len(targets) + (k < faces % len(targets)) for k in range(len(targets))]
    for target, donor, n in zip(targets, donors, per):
        names, vecs = read_folder(dataset / target)
        _, donor_vecs = read_folder(dataset / donor)
        src = donor_vecs.reshape(len(donor_vecs), -1)[rng.integers(len(donor_vecs), size=n)].astype(np.float32)
        new = src + 0.01 * rng.standard_normal(src.shape).astype(np.float32) * np.abs(src).mean()
        shape = (n, *vecs.shape[1:])
        names = np.concatenate([names, np.array([f"added_{k:04d}.jpg" for k in range(n)], dtype=names.dtype)])
        write_folder(dataset / target, names, np.concatenate([vecs, new.reshape(shape).astype(vecs.dtype)]))
    return sum(per)


def remove_faces(dataset: Path, targets: list[str], faces: int) -> int:
    done = 0
    per = [faces // len(targets) + (k < faces % len(targets)) for k in range(len(targets))]
    for target, n in zip(targets, per):
        names, vecs = read_folder(dataset / target)
        n = min(n, len(names) - 1)
        write_folder(dataset / target, names[n:], vecs[n:])
        done += n
    return done


def run_step(step: str, dataset: Path, work: Path, rules: Path, extra: list[str]) -> dict:
    out = work / f"out-{step}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", "dataset_checks", "--dataset", str(dataset), "--rules", str(rules),
           "-p", "no:randomly", "-q", "--report-dir", str(out), *extra]
    wall, rss, rc = run_child(cmd, HERE.parent, work / f"{step}.log")
    if rc not in (0, 1):
        raise SystemExit(f"{step} failed (exit {rc}):\n" + (work / f"{step}.log").read_text()[-3000:])
    meta = json.loads((out / "findings.json").read_text())
    inc = meta.get("incremental") or {}
    timings = meta.get("timings", {})
    stages = sum(timings.values())
    identities = len(meta.get("identities", {}))
    return {"step": step, "mode": inc.get("mode"), "reason": inc.get("reason"), "faces": inc.get("faces"),
            "searched": inc.get("searched"), "added": inc.get("added"), "removed": inc.get("removed"),
            "changed_folders": inc.get("changed_folders"), "search_s": inc.get("search_seconds"),
            "match_s": inc.get("match_seconds"), "index": (inc.get("index") or {}).get("action"),
            "wall_s": round(wall, 2), "peak_rss_mb": round(rss), "stages_s": round(stages, 2),
            "pytest_s": round(wall - stages, 2), "identities": identities,
            "pytest_ms_per_identity": round((wall - stages) / max(identities, 1) * 1000, 3),
            "timings": {k: round(v, 3) for k, v in timings.items()}, "pairs": len(read_pairs(out)), "out": str(out)}


def render(rows: list[dict], env: str, same: str) -> str:
    out = ["# Incremental runs (`benchmarks/incremental.py`)", "", env, "",
           "| step | mode | faces searched | search s | run's stages s | pytest s (ms/identity) | wall s | peak RSS MB |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        searched = r["searched"] if r["searched"] is not None else r["faces"]
        out.append(f"| {r['step']} | {r['mode']} | {searched:,} of {r['faces']:,} | {r['search_s']} | "
                   f"{r['stages_s']} | {r['pytest_s']} ({r['pytest_ms_per_identity']}) | {r['wall_s']} | "
                   f"{r['peak_rss_mb']:,} |")
    out += ["", same, "", "Stages (seconds, findings.json timings):", ""]
    for r in rows:
        reason = f" ({r['reason']})" if r["reason"] else ""
        out.append(f"- {r['step']}: {r['mode']}{reason}; index {r['index']}; "
                   + ", ".join(f"{k} {v}" for k, v in r["timings"].items()))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--source", type=Path, help="dataset to copy (never written); default: generate --size")
    p.add_argument("--size", type=int, default=100_000, help="faces of the generated dataset (without --source)")
    p.add_argument("--faces", type=int, default=100, help="faces added, then removed")
    p.add_argument("--folders", type=int, default=4, help="folders they are spread over")
    p.add_argument("--threshold", default="0.85")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-full-check", action="store_true", help="skip the last --full run")
    p.add_argument("--steps", default="full,add,remove", help="full (a fresh cache and copy), add, remove, "
                   "checkout; without full, the cache and the dataset of the last invocation go on")
    p.add_argument("--no-checks", action="store_true", help="every registered check off: the search alone")
    p.add_argument("--out", type=Path, default=HERE / "incremental_results")
    args = p.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    source = args.source
    if source is None:
        from scale import generate

        source = work / "source"
        generate(source, args.size)
    dataset = work / "dataset"
    steps = args.steps.split(",")
    changed_file = work / "changed.json"
    changed = json.loads(changed_file.read_text()) if changed_file.is_file() else []
    cache = work / "cache"
    if "full" in steps:  # start from the source again
        prepare_copy(source.resolve(), dataset, changed)
        changed = []
        shutil.rmtree(cache, ignore_errors=True)
    targets, removes, donors = pick(dataset, args.folders, args.faces, args.seed)
    changed_file.write_text(json.dumps(sorted(set(changed + targets + removes))))
    rules = work / "rules.yaml"
    text = f"threshold: {args.threshold}\nembeddings:\n  cache: {cache}\n"
    if args.no_checks:
        from dataset_checks.checks import all_checks

        text += "checks:\n" + "".join(f"  {c.name}: {{enabled: false}}\n" for c in all_checks() if not c.builtin)
    rules.write_text(text)
    rows = []

    def step(name: str, *extra: str) -> dict:
        print(f"{name} ...", flush=True)
        row = run_step(name, dataset, work, rules, list(extra))
        print("  " + json.dumps({k: v for k, v in row.items() if k not in ("timings", "out")}), flush=True)
        rows.append(row)
        return row

    if "full" in steps:
        step("full")
    last = None
    if "add" in steps:
        added = add_faces(dataset, targets, donors, args.faces, args.seed)
        last = step(f"add {added}")
    if "remove" in steps:
        removed = remove_faces(dataset, removes, args.faces)
        last = step(f"remove {removed}")
    if "checkout" in steps:
        now = time.time_ns()
        for folder in dataset.iterdir():
            if (folder / "npKnown.npz").is_file():
                os.utime(folder / "npKnown.npz", ns=(now, now))
        last = step("checkout")
    same = ""
    if not args.no_full_check and last is not None:
        full = step("--full", "--full")
        a, b = read_pairs(Path(last["out"])), read_pairs(Path(full["out"]))
        same = (f"findings.csv of the last incremental run and of the `--full` run on the same data: "
                f"{len(a):,} and {len(b):,} pairs, {'identical' if a == b else f'{len(a - b)} only incremental, {len(b - a)} only full'}.")
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
           f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, load average "
           f"{os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}; dataset {source}, threshold "
           f"{args.threshold}{'; every check off' if args.no_checks else ''}")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    text = render(rows, env, same)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
