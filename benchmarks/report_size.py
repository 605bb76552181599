"""Size and load time of report.html on the benchmark dataset (seed_scale: 1,291 identities, 57,637 faces).

    python benchmarks/report_size.py [--out /tmp/report_bench] [--no-images]

Writes the dataset (with a drawn face JPEG per file unless --no-images, so thumbnails are
exercised as on a real dataset), runs `pytest dataset_checks` on it, and reports the size of
report.html, its thumbnails, and the time headless Chromium takes to load it and run its scripts
(--dump-dom; includes the browser's own start, measured separately on an empty page).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataset_checks.portraits import write_portraits
from dataset_checks.synthetic import seed_scale


def chromium_seconds(page: Path, how: str = "dump-dom") -> float:
    """Seconds headless Chromium takes to load `page` and run its scripts, then (how) dump the
    DOM as text or take a screenshot of the first screen (what a reader waits for; dumping a DOM
    of 20,000 result rows adds its serialisation)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return float("nan")
    with tempfile.TemporaryDirectory() as profile:
        action = ["--dump-dom"] if how == "dump-dom" else [f"--screenshot={profile}/shot.png", "--window-size=1280,1000"]
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               *action, page.resolve().as_uri()]
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, timeout=600)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "report_bench")
    ap.add_argument("--no-images", action="store_true")
    args = ap.parse_args()
    data, reports = args.out / "data", args.out / "reports"
    if not data.exists():
        ds = seed_scale()
        t0 = time.perf_counter()
        ds.write(data)
        if not args.no_images:
            n = write_portraits(data, ds.names, ds.files, ds.vectors)
            print(f"wrote {n} images in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "dataset_checks", "-q", "-p", "no:cacheprovider",
                    "--dataset", str(data), "--report-dir", str(reports)], capture_output=True)
    run_s = time.perf_counter() - t0
    html = reports / "report.html"
    text = html.read_text(encoding="utf-8")
    imgs = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", text)
    blank = args.out / "blank.html"
    blank.write_text("<html><body>x</body></html>")
    start = chromium_seconds(blank)
    load = chromium_seconds(html)
    print(f"pytest dataset_checks run: {run_s:.1f} s")
    print(f"report.html: {html.stat().st_size / 1e6:.2f} MB; {len(imgs)} thumbnails "
          f"({len(set(imgs))} distinct), {sum(map(len, imgs)) / 1e6:.2f} MB of base64")
    print(f"headless Chromium load + scripts: {load:.1f} s (browser start alone {start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
