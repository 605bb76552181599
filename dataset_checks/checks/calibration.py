"""Threshold calibration view: how the cross-identity threshold sits between the data's
same-folder and cross-folder similarities.

It never fails: it shows why the threshold is what it is. `threshold: auto` picks it from a tail
fit that nobody sees; a fixed threshold may be far off for this dataset's size. The plot puts both
distributions on one cosine axis, zooms into the upper tail on a log scale (where a false-match
rate of 1e-8 lives) and marks every threshold in force, so that a reader can judge the choice.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from .. import svg
from ..discover import display_name
from ..context import budget_of
from ..memory import Budget, gather
from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData

CROSS = "#3b6fb6"
SAME = "#d9822b"
MARKS = {  # kind: (colour, dash, legend)
    "threshold": ("#b00020", None, "threshold in force"),
    "budget": ("#7a3fb0", "6 3", "budget alone"),
    "floor": ("#555555", "2 3", "floor (model default)"),
    "ceiling": ("#555555", "8 3 2 3", "ceiling (copies must fail)"),
    "suggested": ("#2a7a2a", "5 4", "suggested"),
}
WIDTH = 900
LEFT, RIGHT = 70, 20  # plot margins inside the SVG (axis labels left)
DENSITY = (0, 250)  # (top, height) of the density panel below the legend
TAIL = (0, 300)
BINS = 120
GRID = 400  # x points of the survival curves
CHUNK = 8192  # gathered row pairs per product (~32 MB at d=512)


def sample_same_similarities(vectors: np.ndarray, labels: np.ndarray, max_pairs: int,
                             seed: int = 0, *, budget: Budget | None = None) -> tuple[np.ndarray, int]:
    """(cosines, all same-folder pairs): every same-folder pair when there are at most
    `max_pairs`, else `max_pairs` drawn uniformly over them (with replacement).

    Uniform over pairs, not over folders: a folder is drawn with probability proportional to its
    n(n-1)/2 pairs, then two distinct rows of it, which makes every unordered pair equally likely.
    Drawing folders uniformly would let the many small folders of a long-tailed dataset outweigh
    the few large ones that hold most same-person pairs. `budget`: the run's memory budget,
    checkpointed by the scattered reads (None: none)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    if n < 2:
        return np.zeros(0), 0
    sizes = np.bincount(labels).astype(np.int64)
    per = sizes * (sizes - 1) // 2
    total = int(per.sum())
    if total == 0:
        return np.zeros(0), 0
    order = np.argsort(labels, kind="stable")
    starts = np.cumsum(sizes) - sizes
    if total <= max_pairs:
        # rows are contiguous per folder once sorted: the row at position k pairs with k+1..n-1
        lab_sorted = labels[order]
        pos = np.arange(n) - starts[lab_sorted]
        c = sizes[lab_sorted] - 1 - pos
        a = np.repeat(np.arange(n), c)
        b = a + 1 + (np.arange(total) - np.repeat(np.cumsum(c) - c, c))
    else:
        rng = np.random.default_rng(seed)
        f = rng.choice(sizes.size, size=max_pairs, p=per / total)
        m = sizes[f]
        i = np.minimum((rng.random(max_pairs) * m).astype(np.int64), m - 1)
        j = np.minimum((rng.random(max_pairs) * (m - 1)).astype(np.int64), m - 2)
        j += j >= i
        a, b = starts[f] + i, starts[f] + j
    a, b = order[a], order[b]
    x = np.asarray(vectors)
    out = np.empty(a.size, dtype=np.float64)
    for s in range(0, a.size, CHUNK):
        xa = np.asarray(gather(x, a[s : s + CHUNK], budget=budget), dtype=np.float32)
        xb = np.asarray(gather(x, b[s : s + CHUNK], budget=budget), dtype=np.float32)
        out[s : s + CHUNK] = np.einsum("ij,ij->i", xa, xb)
    return out, total


def model_floor(key: str | None, centred: bool) -> float:
    """The floor `threshold: auto` would use for this embedding key (session._model_rules)."""
    from ..embed import DEFAULT_THRESHOLDS
    from ..threshold import DEFAULT_THRESHOLD

    if key in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[key]["centred" if centred else "raw"]
    return DEFAULT_THRESHOLD


def _share_at(sorted_sims: np.ndarray, t: float) -> tuple[int, float | None]:
    n = sorted_sims.size
    k = int(n - np.searchsorted(sorted_sims, t, side="left"))
    return k, (k / n if n else None)


def _q(sorted_sims: np.ndarray, p: float) -> float | None:
    return float(np.quantile(sorted_sims, p)) if sorted_sims.size else None


@register
class Calibration(Check):
    name = "calibration"
    order = 70
    title = "threshold calibration"
    doc = ("How the cross-identity threshold sits between this dataset's same-folder and cross-folder "
           "similarities: both distributions, the upper tail on a log scale, the thresholds in force, the "
           "false-match rate they imply and a suggested threshold. Informs; never fails.")
    level = "dataset"
    severity = "info"
    params = {
        "same_pairs": Param(50_000, "same-folder pairs sampled (all when fewer)", kind="int", low=1000),
        "cross_pairs": Param(500_000, "cross-folder pairs sampled for the plot and the sample's rate "
                             "(all when fewer)", kind="int", low=10_000),
        "out_of_line": Param(10.0, "report a fixed threshold that expects more than this many times the "
                             "chance-pair budget", low=1.0),
    }
    columns = {"score": "expected chance pairs"}

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        from ..threshold import CEILING, CEILING_CENTRED, calibrate_threshold, cross_pair_count, \
            sample_cross_similarities

        table, rules = data.table, data.rules
        assert rules is not None, "calibration reads the rules' calibration settings: run it with rules"
        cal = rules.calibration
        x, labels = table.vectors, np.asarray(table.identity_of)
        threshold = float(data.threshold)
        memory = budget_of(data.context)  # (`budget` below is the chance-pair budget)
        choice = data.threshold_choice
        self.auto = choice is not None
        if choice is None:
            # what `threshold: auto` would choose, with the rules' calibration settings
            floor = model_floor(table.key, rules.centre)
            ceiling = cal.ceiling if cal.ceiling is not None else (CEILING_CENTRED if rules.centre else CEILING)
            choice = calibrate_threshold(x, labels, floor, chance_pairs=cal.chance_pairs, ceiling=ceiling,
                                         sample_pairs=cal.sample_pairs, seed=cal.seed, budget=memory)
        self.choice = choice
        cross_total = cross_pair_count(labels) if len(labels) else 0
        cross = np.sort(sample_cross_similarities(x, labels, settings["cross_pairs"], seed=cal.seed,
                                                  cross_pairs=cross_total, budget=memory)) if cross_total else np.zeros(0)
        same, same_total = sample_same_similarities(x, labels, settings["same_pairs"], seed=cal.seed,
                                                    budget=memory)
        same.sort()
        self.cross, self.same = cross, same
        self.threshold = threshold
        self.overrides = dict(rules.identity_thresholds)

        k_cross, rate_sample = _share_at(cross, threshold)
        k_same, same_share = _share_at(same, threshold)
        tail = choice.tail
        # above the fit's u the fitted tail is the estimate; below it the sample itself (as
        # threshold.calibrate_threshold does)
        rate_fit = tail.rate(threshold) if tail is not None and threshold > tail.u else rate_sample
        budget = float(choice.chance_pairs_budget)
        s: dict[str, Any] = {
            "threshold": threshold,
            "threshold_source": "auto" if self.auto else "fixed",
            "floor": choice.floor,
            "ceiling": choice.ceiling,
            "budget_threshold": choice.budget_threshold,
            "chance_pairs_budget": budget,
            "budget_rate": budget / cross_total if cross_total else None,
            "cross_pairs": cross_total,
            "cross_sampled": int(cross.size),
            "cross_exact": bool(cross.size == cross_total and cross_total > 0),
            "cross_at_threshold_sampled": k_cross,
            "false_match_rate_sample": rate_sample,
            "false_match_rate_fit": rate_fit,
            "expected_chance_pairs_sample": None if rate_sample is None else rate_sample * cross_total,
            "expected_chance_pairs_fit": None if rate_fit is None else rate_fit * cross_total,
            "same_pairs": same_total,
            "same_sampled": int(same.size),
            "same_exact": bool(same.size == same_total and same_total > 0),
            "same_at_threshold_sampled": k_same,
            "same_share_at_threshold": same_share,
            "cross_quantiles": {k: _q(cross, p) for k, p in (("p50", .5), ("p99", .99), ("p99.9", .999),
                                                             ("max", 1.0))},
            "same_quantiles": {k: _q(same, p) for k, p in (("p5", .05), ("p50", .5))},
            "suggested_threshold": choice.value,
            "suggested_source": choice.source,
            "tail": None if tail is None else {"u": tail.u, "xi": tail.xi, "sigma": tail.sigma, "p_u": tail.p_u},
            "identity_thresholds": {display_name(k): v for k, v in self.overrides.items()},
        }
        s["explanation"] = self._explain(s)
        self._summary = s

        issues = []
        fit_expected = s["expected_chance_pairs_fit"]
        if (not self.auto and choice.source != "fallback" and fit_expected is not None
                and fit_expected > settings["out_of_line"] * budget and choice.value > threshold):
            issues.append(Issue(
                self.name, score=float(fit_expected), severity=settings.severity,
                detail=(f"the fixed threshold {threshold:g} expects about {fit_expected:.3g} chance pairs among "
                        f"{cross_total:,} cross-folder pairs (budget {budget:g}): suggested {choice.value:.4f} "
                        f"(threshold: auto)")))
        return issues

    def _explain(self, s: dict[str, Any]) -> str:
        c = self.choice
        cross = f"{s['cross_pairs']:,} cross-folder pairs"
        if c.source == "fallback":
            why = f"{c.reason}: the model's {c.floor:g}"
        elif c.source == "floor":
            why = (f"the model's floor {c.floor:g}: the budget of {c.chance_pairs_budget:g} chance pair(s) among "
                   f"{cross} alone would allow {c.budget_threshold:.4f}")
        elif c.source == "ceiling":
            why = (f"capped at the ceiling {c.ceiling:g} so that copies always fail; the budget of "
                   f"{c.chance_pairs_budget:g} chance pair(s) among {cross} alone needs {c.budget_threshold:.4f}")
        else:
            why = (f"the lowest threshold at which about {c.expected_pairs:.2g} chance pairs are expected among "
                   f"{cross} (budget {c.chance_pairs_budget:g}; tail fitted to {c.sample_size:,} sampled pairs)")
        if self.auto:
            return f"{c.value:.4f} (threshold: auto): {why}."
        return f"{c.value:.4f} (what threshold: auto would choose; the fixed threshold is {s['threshold']:g}): {why}."

    def summary(self) -> dict[str, Any]:
        return getattr(self, "_summary", {})

    # -- report ------------------------------------------------------------------------------
    def markers(self) -> list[tuple[str, float]]:
        s = self._summary
        out = [("threshold", s["threshold"])]
        if self.auto and self.choice.source != "fallback":
            out += [("floor", s["floor"]), ("ceiling", s["ceiling"])]
            if s["budget_threshold"] is not None:
                out.append(("budget", s["budget_threshold"]))
        elif not self.auto:
            out.append(("suggested", s["suggested_threshold"]))
            if s["budget_threshold"] is not None and abs(s["budget_threshold"] - s["suggested_threshold"]) > 1e-4:
                out.append(("budget", s["budget_threshold"]))
        return [(k, float(v)) for k, v in out if v is not None and -1.0 <= v <= 1.0]

    def report_html(self) -> str:
        s = getattr(self, "_summary", None)
        if not s:
            return ""
        return ("<div class='dc-calibration'>" + self.numbers_html() + plot(self) + "</div>")

    def numbers_html(self) -> str:
        s = self._summary

        def g(v: float | None, fmt: str = "{:.2g}") -> str:
            return "&ndash;" if v is None else escape(fmt.format(v))

        rows = [
            ("Threshold in force", f"cosine &ge; {s['threshold']:.4f} ({'auto' if self.auto else 'fixed'})"
             + (f"; {len(self.overrides)} per-identity override(s)" if self.overrides else "")),
            ("False-match rate at it",
             f"fitted tail {g(s['false_match_rate_fit'])} &rarr; {g(s['expected_chance_pairs_fit'])} expected "
             f"chance pair(s) among {s['cross_pairs']:,} cross-folder pairs (budget {s['chance_pairs_budget']:g}); "
             f"sample {s['cross_at_threshold_sampled']:,} of {s['cross_sampled']:,} "
             f"({g(s['false_match_rate_sample'])}{', every pair' if s['cross_exact'] else ''}; "
             f"real label errors count here too)"),
            ("Same-folder pairs at or above it",
             ("none (every folder has one face)" if not s["same_sampled"] else
              f"{g(s['same_share_at_threshold'], '{:.2%}')} ({s['same_at_threshold_sampled']:,} of "
              f"{s['same_sampled']:,} {'(every pair)' if s['same_exact'] else 'sampled of ' + format(s['same_pairs'], ',')}"
              f"): about this share of the pairs of one person filed under two names would fail")),
            ("Suggested threshold", escape(s["explanation"])),
        ]
        # inline styles: the report's stylesheet knows nothing of this check
        cell = "border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px"
        body = "".join(f"<tr><th style='{cell};background:#f3f3f3;width:16em'>{escape(k)}</th>"
                       f"<td style='{cell}'>{v}</td></tr>" for k, v in rows)
        return f"<table class='dc-calibration-numbers' style='border-collapse:collapse;margin:4px 0 12px'>{body}</table>"


# -- the plot ----------------------------------------------------------------------------------
def _x_of(v: float, lo: float, hi: float, left: float = LEFT, width: float = WIDTH - LEFT - RIGHT) -> float:
    return left + (v - lo) / (hi - lo) * width


def panel_range(sims: list[np.ndarray], marks: list[float], tail: bool) -> tuple[float, float]:
    """Cosine range of a panel: the bulk of both samples (density) or the cross-folder sample's
    top 1% and every marker (tail), up to 1."""
    if tail:
        c = sims[0]
        base = float(np.quantile(c, 0.99)) if c.size else 0.9
        lo = min([base, *[m - 0.01 for m in marks]])
        step = 0.01
    else:
        lows = [float(np.quantile(a, 0.0005)) for a in sims if a.size] + [min(marks, default=1.0) - 0.02]
        lo = min(lows) if lows else 0.0
        step = 0.05
    lo = max(-1.0, math.floor(lo / step) * step)
    return lo, 1.0


def _axis_x(lo: float, hi: float, y: float, out: list[str]) -> None:
    step = svg.nice_step(hi - lo, 10)
    out.append(svg.line(LEFT, y, WIDTH - RIGHT, y, "#333"))
    t = math.ceil(lo / step - 1e-9) * step
    decimals = max(0, -int(math.floor(math.log10(step))) + (1 if step * 10 ** -math.floor(math.log10(step)) == 2.5 else 0))
    while t <= hi + 1e-9:
        x = _x_of(t, lo, hi)
        out.append(svg.line(x, y, x, y + 4, "#333"))
        out.append(svg.text(x, y + 16, f"{t:.{decimals}f}", 11, "middle"))
        t += step


def _marks(marks: list[tuple[str, float]], overrides: dict[str, float], lo: float, hi: float, top: float,
           bottom: float, out: list[str]) -> None:
    for kind, v in marks:
        if not lo <= v <= hi:
            continue
        colour, dash, legend = MARKS[kind]
        x = _x_of(v, lo, hi)
        out.append(svg.line(x, top, x, bottom, colour, 2.0 if kind == "threshold" else 1.5, dash,
                            cls="dc-cal-mark", attrs={"data-kind": kind, "data-value": f"{v:.6f}"},
                            title=f"{legend}: {v:.4f}"))
    for name, v in sorted(overrides.items(), key=lambda kv: kv[1]):
        if lo <= v <= hi:
            x = _x_of(v, lo, hi)
            out.append(svg.line(x, bottom - 8, x, bottom, "#b00020", 2.0, cls="dc-cal-override",
                                attrs={"data-value": f"{v:.6f}"}, title=f"{display_name(name)}: {v:.4f}"))


def _hist(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    counts, _ = np.histogram(a, bins=BINS, range=(lo, hi))
    return counts / max(1, a.size)


def _steps(h: np.ndarray, lo: float, hi: float, top: float, height: float, ymax: float) -> list[tuple[float, float]]:
    w = (hi - lo) / BINS
    base = top + height
    pts = [(_x_of(lo, lo, hi), base)]
    for k, v in enumerate(h):
        y = base - v / ymax * height
        pts += [(_x_of(lo + k * w, lo, hi), y), (_x_of(lo + (k + 1) * w, lo, hi), y)]
    pts.append((_x_of(hi, lo, hi), base))
    return pts


def _legend(check: Calibration, y: float, out: list[str]) -> float:
    s = check._summary
    items: list[tuple[str, str | None, str]] = [(CROSS, None, f"cross-folder pairs ({s['cross_sampled']:,}{' = all' if s['cross_exact'] else ' sampled'})"),
             (SAME, None, f"same-folder pairs ({s['same_sampled']:,}{' = all' if s['same_exact'] else ' sampled'})")]
    if check.choice.tail is not None:
        items.append((CROSS, "3 3", "cross-folder tail fit (GPD)"))
    for kind, v in check.markers():
        colour, dash, legend = MARKS[kind]
        items.append((colour, dash, f"{legend} {v:.4f}"))
    if check.overrides:
        items.append(("#b00020", None, f"per-identity overrides (ticks, {len(check.overrides)})"))
    x: float = LEFT
    for colour, dash, label in items:
        w = 34 + 6.4 * len(label)
        if x + w > WIDTH - RIGHT:
            x, y = LEFT, y + 18
        out.append(svg.line(x, y - 4, x + 24, y - 4, colour, 3 if dash is None else 2, dash))
        out.append(svg.text(x + 30, y, label, 12))
        x += w + 14
    return y + 14


def plot(check: Calibration) -> str:
    s = check._summary
    cross, same = check.cross, check.same
    marks = check.markers()
    mvals = [v for _, v in marks]
    out: list[str] = []
    y = _legend(check, 18, out) + 16
    inner = WIDTH - LEFT - RIGHT

    # density: both distributions on one cosine axis, each as its share of pairs per bin, so
    # that a sample of 100k and one of 1M compare by shape
    lo, hi = panel_range([cross, same], mvals, tail=False)
    top, height = y + 18, DENSITY[1]
    out.append(f"<g class='dc-cal-panel' data-panel='density' data-lo='{lo:.6f}' data-hi='{hi:.6f}' "
               f"data-left='{LEFT}' data-width='{inner}'>")
    out.append(svg.text(LEFT, top - 6, "Cosine similarity of face pairs: share of pairs per bin "
                        f"({(hi - lo) / BINS:.3g} wide)", 13, weight="bold"))
    hc, hs = _hist(cross, lo, hi), _hist(same, lo, hi)
    ymax = max(float(hc.max(initial=0)), float(hs.max(initial=0))) * 1.08 or 1.0
    out.append(svg.rect(LEFT, top, inner, height, "#fcfcfc", "#ddd"))
    for h, colour in ((hc, CROSS), (hs, SAME)):
        if h.any():
            out.append(svg.polyline(_steps(h, lo, hi, top, height, ymax), colour, 1.5, fill=colour, opacity=0.18))
    _marks(marks, check.overrides, lo, hi, top, top + height, out)
    _axis_x(lo, hi, top + height, out)
    out.append(svg.text(LEFT - 8, top + 10, f"{ymax:.2g}", 11, "end"))
    out.append(svg.text(LEFT - 8, top + height, "0", 11, "end"))
    out.append("</g>")
    y = top + height + 40

    # upper tail, log scale: where the threshold lives; a rate of 1e-8 is invisible above
    lo, hi = panel_range([cross], mvals, tail=True)
    top, height = y + 18, TAIL[1]
    n = max(1, cross.size)
    budget_rate = s["budget_rate"]
    floor_rate = min([0.5 / n] + ([budget_rate] if budget_rate else []))
    ylo = max(-14, math.floor(math.log10(floor_rate)) - 1)

    def y_of(p: float) -> float:
        return top + (0 - math.log10(p)) / (0 - ylo) * height

    out.append(f"<g class='dc-cal-panel' data-panel='tail' data-lo='{lo:.6f}' data-hi='{hi:.6f}' "
               f"data-left='{LEFT}' data-width='{inner}' data-ylo='{ylo}'>")
    out.append(svg.text(LEFT, top - 6, "Upper tail: share of pairs at or above each cosine (log scale)", 13,
                        weight="bold"))
    out.append(svg.rect(LEFT, top, inner, height, "#fcfcfc", "#ddd"))
    for e in range(0, ylo - 1, -1):
        yy = y_of(10.0 ** e)
        out.append(svg.line(LEFT, yy, WIDTH - RIGHT, yy, "#eee"))
        if (-e) % max(1, (-ylo) // 7) == 0:
            out.append(svg.text(LEFT - 8, yy + 4, "1" if e == 0 else f"1e{e}", 11, "end"))
    xs = np.linspace(lo, hi, GRID)
    for a, colour in ((cross, CROSS), (same, SAME)):
        if not a.size:
            continue
        surv = (a.size - np.searchsorted(a, xs, side="left")) / a.size
        pts = [(_x_of(float(xv), lo, hi), y_of(float(p))) for xv, p in zip(xs, surv) if p > 0]
        if pts:
            out.append(svg.polyline(pts, colour, 2.0))
    tail = check.choice.tail
    if tail is not None:
        pts = []
        for xv in xs:
            if xv <= tail.u:
                continue
            p = tail.rate(float(xv))
            if p < 10.0 ** ylo:
                break
            pts.append((_x_of(float(xv), lo, hi), y_of(p)))
        if len(pts) > 1:
            out.append(svg.polyline(pts, CROSS, 1.5, dash="3 3"))
    if budget_rate:
        yy = y_of(budget_rate)
        out.append(svg.line(LEFT, yy, WIDTH - RIGHT, yy, MARKS["budget"][0], 1.0, "2 2",
                            cls="dc-cal-budget-rate", attrs={"data-value": f"{budget_rate:.6g}"}))
        out.append(svg.text(LEFT + 6, yy - 4, f"budget: {s['chance_pairs_budget']:g} chance pair(s) in "
                            f"{s['cross_pairs']:,} = rate {budget_rate:.2g}", 11, fill=MARKS["budget"][0]))
    _marks(marks, check.overrides, lo, hi, top, top + height, out)
    _axis_x(lo, hi, top + height, out)
    out.append("</g>")
    y = top + height + 24
    out.append(svg.text(LEFT + inner / 2, y + 6, "cosine similarity", 12, "middle"))
    return svg.svg(WIDTH, int(y + 14), out, "threshold calibration: same-folder and cross-folder similarities")
