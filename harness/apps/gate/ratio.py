"""How the gate judges one timed case: the rule, in absolute time and relative to an in-run anchor.

The rule (`judge`): a change counts only when the *whole* confidence interval of the ratio candidate /
reference lies beyond ``1 +- threshold`` AND a Mann-Whitney U test of the two sample sets agrees
(p < `ALPHA`); too few samples for the test to ever reach `ALPHA` is ``inconclusive``.

The suite's ``[gate] mode`` (`MODES`) says which numbers the rule is applied to:
- ``absolute``: the raw ``samples_ms`` of the two runs (`stats.ratio_ci`, bootstrap of the ratio of medians);
- ``ratio``: each case's per-round time divided by the same round's time of its *anchor* (`anchors`: the
  fastest correct ``dense_reference`` row of that problem in the reference run, the same case id in both
  runs), the two runs' anchored series compared by `stats.runs_ratio_ci` (block bootstrap over rounds, each
  run on its own). Clock or power drift that moves a case and its anchor alike cancels. The anchor's own
  ratio is 1 by construction: a slowdown of the anchor is seen only in absolute time (`anchor_warnings`);
- ``both``: a regression (an improvement) only when absolute AND ratio both say so.
Both numbers are computed for every timed case whatever the mode. A case with no anchor (no dense reference
of its problem in the reference run, the anchor not timed in the candidate or timed on another GPU of a
``--gpus`` run, no round in common) is judged on absolute time and says so. Rows without ``samples_round``
count as one sample per round, in order.
The verdict's words for the modes and anchors (`mode_lines`, `anchor_warnings`) live here too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from harness.measure import stats
from harness.measure.derived import PROBLEM_KEY_FIELDS, dense_references, problem_key

ALPHA = 0.01  # Mann-Whitney significance a regression or improvement must also reach
N_BOOT = 4000  # bootstrap resamples for the ratio's confidence interval
MODES = {  # the suite's [gate] mode -> what decides, as the summary says it
    "absolute": "absolute times decide; 'Vs anchor' is shown for information",
    "ratio": "each case's per-round time / its anchor's in the same round decides (drift cancels)",
    "both": "a regression or improvement only when absolute AND vs-anchor agree",
}
DEFAULT_MODE = "absolute"
MOVED = ("regression", "improvement")

Interval = Callable[[Sequence[float], Sequence[float]], tuple[float, float, float]]


def check_mode(value, field: str) -> str:
    """A gate mode (`MODES`), else ValueError naming ``field``."""
    if value not in MODES:
        raise ValueError(f"{field}: {value!r} is not a gate mode; expected one of {', '.join(MODES)}")
    return value


# ---- the rule ---------------------------------------------------------------------------------------------

def judge(ref: Sequence[float], cand: Sequence[float], interval: Interval, threshold_pct: float) -> dict:
    """The gate's rule on two sample sets; ``interval(ref, cand)`` gives ``(ratio, lo, hi)``."""
    n_ref, n_cand = len(ref), len(cand)
    # the smallest p the test can give with these counts: that of two sets that do not overlap at all
    best_p = stats.mann_whitney_u(range(n_ref), range(n_ref, n_ref + n_cand)) if n_ref and n_cand else 1.0
    if best_p >= ALPHA:
        return {"outcome": "inconclusive", "reason": f"{n_ref} + {n_cand} samples cannot reach p < {ALPHA}"}
    ratio, lo, hi = interval(ref, cand)
    p_value = stats.mann_whitney_u(ref, cand)
    bound = threshold_pct / 100.0
    if lo > 1.0 + bound and p_value < ALPHA:
        outcome = "regression"
    elif hi < 1.0 - bound and p_value < ALPHA:
        outcome = "improvement"
    else:
        outcome = "unchanged"
    change = (ratio - 1.0) * 100.0
    return {"outcome": outcome, "ratio": ratio, "ci": [lo, hi], "p_value": p_value,
            "reason": f"{abs(change):.1f}% {'slower' if change >= 0 else 'faster'} "
                      f"(CI {(lo - 1) * 100:+.1f}%..{(hi - 1) * 100:+.1f}%), p={p_value:.2g}"}


# ---- anchors ----------------------------------------------------------------------------------------------

def rounds_of(row: Mapping) -> list[int]:
    """The round of each sample: ``samples_round``, else one sample per round in order."""
    return list(row.get("samples_round") or range(len(row.get("samples_ms") or ())))


def anchor_key(row: Mapping) -> tuple:
    """What a row's anchor is looked up by: its kind and its problem (all fields but the layer)."""
    return row.get("kind"), problem_key(row)


def anchors(rows: Mapping[str, Mapping]) -> dict[tuple, str]:
    """(kind, problem key) -> case id of the fastest correct timed dense-reference row of that problem."""
    by_problem: dict[tuple, list[Mapping]] = defaultdict(list)
    for row in rows.values():
        if isinstance(row.get("problem"), Mapping):
            by_problem[anchor_key(row)].append(row)
    fastest = {key: dense_references(group) for key, group in by_problem.items()}
    return {key: min(refs.values(), key=lambda r: r["median_ms"])["case"] for key, refs in fastest.items() if refs}


def anchor_table(ref_rows: Mapping[str, Mapping], cand_rows: Mapping[str, Mapping]) -> list[dict]:
    """The verdict's ``anchors``: per problem, the anchor (the reference run's fastest dense kernel, used in
    both runs so that both ratios have the same denominator) and the candidate's own fastest."""
    ref_anchors, cand_anchors = anchors(ref_rows), anchors(cand_rows)
    return [{"kind": key[0], "problem": dict(zip(PROBLEM_KEY_FIELDS, key[1])), "anchor": ref_anchors.get(key),
             "candidate_fastest": cand_anchors.get(key)}
            for key in dict.fromkeys([*ref_anchors, *cand_anchors])]


def _anchored_series(row: Mapping, anchor: Mapping) -> np.ndarray:
    return stats.anchored_ratios(row["samples_ms"], rounds_of(row), anchor["samples_ms"], rounds_of(anchor))


def anchored(ref: Mapping, cand: Mapping, anchor_case: str | None, ref_rows: Mapping[str, Mapping],
             cand_rows: Mapping[str, Mapping], threshold_pct: float, level: float, seed: int) -> dict:
    """The ratio-mode judgement of one case against ``anchor_case``: its anchored series in the two runs,
    compared; ``outcome`` is ``"n/a"`` (with the reason) when the case has no usable anchor."""
    if anchor_case is None:
        return {"anchor": None, "outcome": "n/a", "reason": "no dense reference of this problem in the reference run"}
    ref_anchor, cand_anchor = ref_rows[anchor_case], cand_rows.get(anchor_case)
    if cand_anchor is None or cand_anchor.get("status") != "ok" or not cand_anchor.get("samples_ms"):
        return {"anchor": anchor_case, "outcome": "n/a",
                "reason": f"the anchor {anchor_case} is not timed in the candidate"}
    for side, row, anchor in (("reference", ref, ref_anchor), ("candidate", cand, cand_anchor)):
        if row.get("device_index") != anchor.get("device_index"):  # a --gpus run: rounds of two cards
            return {"anchor": anchor_case, "outcome": "n/a",
                    "reason": f"in the {side} the anchor {anchor_case} ran on another GPU "
                              f"({anchor.get('device_index')} vs {row.get('device_index')}): no common rounds"}
    try:
        ref_series, cand_series = _anchored_series(ref, ref_anchor), _anchored_series(cand, cand_anchor)
    except ValueError as exc:
        return {"anchor": anchor_case, "outcome": "n/a", "reason": f"against the anchor {anchor_case}: {exc}"}
    out = judge(ref_series, cand_series,
                lambda a, b: stats.runs_ratio_ci(a, b, level=level, n_boot=N_BOOT, seed=seed), threshold_pct)
    note = " (the anchor itself: 1 by construction)" if ref.get("case") == anchor_case else ""
    return {"anchor": anchor_case, "ref_rounds": len(ref_series), "cand_rounds": len(cand_series), **out,
            "reason": out["reason"] + note}


# ---- one timed case, in the suite's mode --------------------------------------------------------------------

def median_of(row: Mapping) -> float | None:
    """A row's median in ms: of its raw samples when it has them, else its recorded ``median_ms``."""
    samples = row.get("samples_ms")
    return float(np.median(samples)) if samples else row.get("median_ms")


def _combined(mode: str, absolute: dict, relative: dict) -> tuple[str, str]:
    """(outcome, reason) in ``mode`` from the absolute and the anchored judgements."""
    if mode == "absolute":
        return absolute["outcome"], absolute["reason"]
    if relative["outcome"] == "n/a":
        return absolute["outcome"], f"{absolute['reason']}; judged on absolute time: {relative['reason']}"
    if mode == "ratio":
        return relative["outcome"], f"vs anchor {relative['reason']}"
    outcomes = {absolute["outcome"], relative["outcome"]}
    outcome = (absolute["outcome"] if len(outcomes) == 1 else
               "inconclusive" if "inconclusive" in outcomes else "unchanged")
    return outcome, f"absolute {absolute['reason']}; vs anchor {relative['reason']}"


def timed_outcome(ref: Mapping, cand: Mapping, anchor_case: str | None, ref_rows: Mapping[str, Mapping],
                  cand_rows: Mapping[str, Mapping], mode: str, threshold_pct: float, level: float,
                  seed: int) -> dict:
    """The verdict entry's fields of a case timed in both runs: ``ratio``/``ci``/``p_value`` (absolute),
    ``absolute_outcome``, ``anchored`` (the ratio-mode numbers) and ``outcome``/``reason`` in ``mode``."""
    ref_ms, cand_ms = list(ref.get("samples_ms") or []), list(cand.get("samples_ms") or [])
    absolute = judge(ref_ms, cand_ms,
                     lambda a, b: stats.ratio_ci(a, b, level=level, n_boot=N_BOOT, seed=seed), threshold_pct)
    relative = anchored(ref, cand, anchor_case, ref_rows, cand_rows, threshold_pct, level, seed)
    outcome, reason = _combined(mode, absolute, relative)
    return {"ref_n": len(ref_ms), "cand_n": len(cand_ms), "ref_median_ms": median_of(ref),
            "cand_median_ms": median_of(cand),
            **{key: absolute[key] for key in ("ratio", "ci", "p_value") if key in absolute},
            "absolute_outcome": absolute["outcome"], "anchored": relative, "outcome": outcome, "reason": reason}


def anchor_warnings(mode: str, cases: Sequence[Mapping]) -> list[str]:
    """In ratio or both mode: an anchor that itself moved in absolute time moves every ratio of its problem
    the other way, and ratio mode alone cannot tell that from drift."""
    if mode == "absolute":
        return []
    return [f"The anchor {e['case']} is {abs(e['ratio'] - 1) * 100:.1f}% "
            f"{'slower' if e['ratio'] > 1 else 'faster'} in absolute time ({e['absolute_outcome']}): the ratios "
            "of its problem moved the other way by as much; see the absolute column."
            for e in cases if (e.get("anchored") or {}).get("anchor") == e["case"]
            and e.get("absolute_outcome") in MOVED]


# ---- the verdict's words -------------------------------------------------------------------------------

def deciding_ratio(entry: Mapping, mode: str) -> float | None:
    """The ratio the outcome rests on: absolute, or vs the anchor in ratio and both modes (when there is one)."""
    anchored = entry.get("anchored") or {}
    return anchored.get("ratio", entry.get("ratio")) if mode != "absolute" else entry.get("ratio")


def mode_lines(verdict: Mapping) -> list[str]:
    """What the mode means, and each problem's anchor (the candidate's own fastest dense kernel if it differs)."""
    mode = verdict.get("mode", DEFAULT_MODE)
    anchors = [f"`{a['anchor']}`" + (f" (the candidate's fastest: `{a['candidate_fastest']}`)"
                                     if a["candidate_fastest"] != a["anchor"] else "")
               for a in verdict.get("anchors") or () if a.get("anchor")]
    return [f"- Mode: **{mode}**: {MODES[mode]}", f"- Anchors: {', '.join(anchors) or 'none (no dense reference)'}"]
