"""`threshold: auto` on LFW: the data-driven threshold against the fixed model default.

    python benchmarks/lfw_threshold.py [../shared/lfw] [--seeds 5] [--sheets DIR]

Loads the dlib vectors, runs calibrate_threshold with the dlib floor (0.95 raw, 0.75 centred),
counts failing identities and cross-folder pairs at the floor and at the chosen value (exact
brute force), and with --sheets writes contact sheets of the failing pairs for a person to judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_checks.discover import discover_identities  # noqa: E402
from dataset_checks.search import exact_pairs  # noqa: E402
from dataset_checks.threshold import CEILING, CEILING_CENTRED, calibrate_threshold  # noqa: E402
from dataset_checks.vectors import centre_vectors, load_table  # noqa: E402


def failing(result, labels) -> tuple[int, int]:
    ids = set(labels[result.i].tolist()) | set(labels[result.j].tolist())
    return len(ids), len(result)


def _lost_lookalike_names(old, value, labels, table):
    import difflib

    best = {}
    for i, j, s in zip(old.i.tolist(), old.j.tolist(), old.sim.tolist()):
        key = tuple(sorted((int(labels[i]), int(labels[j]))))
        best[key] = max(best.get(key, -1.0), s)
    tokens = lambda n: "".join(sorted(n.lower().replace("-", "_").split("_")))  # noqa: E731
    out = []
    for (a, b), s in best.items():
        na, nb = table.identities[a].name, table.identities[b].name
        if s < value and difflib.SequenceMatcher(None, tokens(na), tokens(nb)).ratio() > 0.7:
            out.append((s, na, nb))
    return sorted(out, reverse=True)


def sheet(pairs, table, root: Path, out: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    cell, per_row = 120, 4  # four pairs per row, each pair two 120 px faces
    rows = (len(pairs) + per_row - 1) // per_row
    img = Image.new("RGB", (per_row * (2 * cell + 10), rows * (cell + 34) + 16), "white")
    draw = ImageDraw.Draw(img)
    draw.text((2, 2), title, fill="black")
    for k, (a, b, s) in enumerate(pairs):
        x0, y0 = (k % per_row) * (2 * cell + 10), 16 + (k // per_row) * (cell + 34)
        for side, r in enumerate((a, b)):
            name = table.identities[table.identity_of[r]].name
            face = Image.open(root / name / table.files[r]).convert("RGB").crop((55, 55, 195, 195))
            img.paste(face.resize((cell, cell)), (x0 + side * cell, y0))
            draw.text((x0 + side * cell + 1, y0 + cell + 1), table.files[r][:-4][-19:], fill="black")
        draw.text((x0 + 1, y0 + cell + 12), f"#{k} {s:.4f}", fill="red")
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sheets", type=Path)
    args = ap.parse_args()
    root = Path(args.root)
    t0 = time.perf_counter()
    ids = discover_identities(root)
    table = load_table(root, ids, "dlib")
    print(f"loaded {table.vectors.shape} in {time.perf_counter() - t0:.2f} s")
    labels = table.identity_of
    report = {}
    for mode, floor, ceiling in (("raw", 0.95, CEILING), ("centred", 0.75, CEILING_CENTRED)):
        vectors = table.vectors if mode == "raw" else centre_vectors(table.vectors)
        choices = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            c = calibrate_threshold(vectors, labels, floor, ceiling=ceiling, seed=seed)
            choices.append((c, time.perf_counter() - t))
        c, secs = choices[0]
        values = [x.value for x, _ in choices]
        print(f"\n[{mode}] {c.describe()}")
        print(f"  tail: u={c.tail.u:.4f} xi={c.tail.xi:.3f} sigma={c.tail.sigma:.4f} "
              f"endpoint={c.tail.endpoint():.4f}; budget alone needs {c.budget_threshold:.4f}")
        print(f"  seeds 0-{args.seeds - 1}: values {', '.join(f'{v:.4f}' for v in values)}; "
              f"budget thresholds {', '.join(f'{x.budget_threshold:.4f}' for x, _ in choices)}; "
              f"time {min(s for _, s in choices):.3f}-{max(s for _, s in choices):.3f} s")
        old = exact_pairs(vectors, labels, floor)
        new = exact_pairs(vectors, labels, c.value)
        (fo, po), (fn, pn) = failing(old, labels), failing(new, labels)
        print(f"  at floor {floor}: {fo} failing identities, {po} cross-folder pairs; predicted pairs "
              f"{c.tail.rate(floor) * c.cross_pairs:.0f}")
        print(f"  at {c.value:.4f}: {fn} failing identities, {pn} cross-folder pairs")
        for t in ((0.96, 0.97, 0.98) if mode == "raw" else (0.8, 0.85, 0.9)):
            n = int(np.count_nonzero(old.sim >= t))
            print(f"    at {t}: exact {n} pairs, fitted {c.tail.rate(t) * c.cross_pairs:.1f}")
        # identity pairs that stop failing although their names look alike (spelling or name
        # order variants: likely one person under two names) -- the cost of the higher threshold
        lost = _lost_lookalike_names(old, c.value, labels, table)
        for s, a, b in lost:
            print(f"    no longer failing, similar names: {s:.4f} {a} / {b}")
        report[mode] = {"choice": c.as_dict(), "values": values, "old": [fo, po], "new": [fn, pn]}
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            pairs = list(zip(new.i.tolist(), new.j.tolist(), new.sim.tolist()))
            for k in range(0, len(pairs), 20):
                sheet(pairs[k : k + 20], table, root, args.sheets / f"{mode}_new_{k // 20}.png",
                      f"{mode}: pairs >= {c.value:.4f}, {k}-{k + 19}")
            dropped = [(i, j, s) for i, j, s in zip(old.i.tolist(), old.j.tolist(), old.sim.tolist()) if s < c.value]
            rng = np.random.default_rng(0)
            pick = sorted(rng.choice(len(dropped), min(40, len(dropped)), replace=False).tolist())
            sample = [dropped[p] for p in pick]
            for k in range(0, len(sample), 20):
                sheet(sample[k : k + 20], table, root, args.sheets / f"{mode}_dropped_{k // 20}.png",
                      f"{mode}: random pairs in [{floor}, {c.value:.4f}), {k}-{k + 19}")
            with open(args.sheets / f"{mode}_new_pairs.txt", "w") as f:
                for k, (i, j, s) in enumerate(pairs):
                    f.write(f"#{k} {s:.4f} {table.identities[labels[i]].name}/{table.files[i]}  "
                            f"{table.identities[labels[j]].name}/{table.files[j]}\n")
    if args.sheets:
        (args.sheets / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
