"""The first screen: four answers a reviewer needs in ten seconds, each in a card with its own element id.

- ``answer-speedup``: HilbertA's speedup over every baseline family (`reports.speedups`), with intervals
  and the spread over sliding phases, on the phase basis the page names;
- ``answer-correct``: "N/N cases correct, max relative error X <= tolerance";
- ``answer-setup``: card, clocks under load (from each case's own "conditions"), power cap, software,
  problem shape, forward-only, the launch configs that ran;
- ``answer-failures``: every case that did not end ok with its reason; an incomplete run says so here.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from reports.anomalies import find_anomalies
from reports.blocks import Answer, Definitions, Paragraph, Section, Stack
from reports.formatting import (MISSING, NOT_RECORDED, fmt_int, fmt_mhz_int, fmt_ms, fmt_pct,
                                fmt_ratio, fmt_sci, fmt_text, fmt_watts, number_or_none)
from reports.rows import INTERVAL_RULE, PHASE_BASIS, STATUS_OK, dig, resolution_order
from reports.run import Run
from reports.speedups import family_speedups
from reports.tables import Column, build_table, status_class

ID, TITLE = "answers", "At a glance"
PAPER_CLAIMS = {"1024x1024": 2.3, "2048x2048": 4.17}  # attention speedup, Flux.1-dev, dense baseline unnamed

SPEEDUP_COLUMNS = [
    Column("family", "baseline family"),
    Column("baseline_text", "baseline", tip="dense: the fastest dense kernel of the run; the others: the "
           "configuration whose token density is nearest HilbertA's"),
    Column("baseline_density", "density", fmt_pct, numeric=True, tip="token density: allowed pairs / L²"),
    Column("baseline_ms", "its ms", fmt_ms, numeric=True, tip=PHASE_BASIS),
    Column("speedup", "HilbertA speedup", fmt_ratio, numeric=True, tip="baseline ms / HilbertA ms"),
    Column("interval", "95 % interval", tip=INTERVAL_RULE),
    Column("spread", "over phases", tip="the speedup at each sliding phase of HilbertA (layer i against layer i "
           "where the baseline slides too), lowest to highest"),
]
FAILURE_COLUMNS = [Column("case", "case"), Column("status", "status"), Column("short_reason", "reason")]
REASON_CHARS = 90
SHORT_SPEEDUP_TABLE = 6  # rows: one size's families; the setup card fits under such a table  # the full reason is in the latency and correctness tables


def _short(reason: object) -> str:
    text = fmt_text(reason)
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1].rstrip() + "…"


def _span(low, high) -> str:
    """A compact range of ratios: 2.78–2.93×."""
    if number_or_none(low) is None or number_or_none(high) is None:
        return MISSING
    return f"{low:.2f}–{high:.2f}×"


def _speedup_card(run: Run, table: pd.DataFrame) -> Answer:
    kinds = sorted({str(kind) for kind in run.frame["kind"].dropna()} - {"kernel"})
    if table.empty and not (run.frame["kind"] == "kernel").any():
        return Answer("answer-speedup", "How much faster?", [Paragraph(
            f"This run has no kernel rows (only {', '.join(kinds) or 'none'}): speedups come from kernel suites; "
            "see the sections below for what it measured.", css="note")])
    if table.empty:
        return Answer("answer-speedup", "How much faster?", [Paragraph(
            "No HilbertA kernel passed correctness with a timing: no speedup to report.", css="warning")], "bad")
    blocks = []
    for resolution, rows in table.groupby("resolution", sort=False):
        first = rows.iloc[0]
        rows = rows.assign(
            baseline_text=[note or (f"{label} (fastest)" if rule == "fastest" else label)
                           for label, rule, note in zip(rows["baseline"], rows["rule"], rows["note"])],
            interval=[_span(lo, hi) for lo, hi in zip(rows["speedup_lo"], rows["speedup_hi"])],
            spread=[_span(lo, hi) if first["phases"] > 1 else "one phase"
                    for lo, hi in zip(rows["spread_lo"], rows["spread_hi"])])
        caption = (f"{resolution}: {first['hilberta']}, {fmt_ms(first['hilberta_ms'])} ms per call "
                   f"(token density {fmt_pct(first['hilberta_density'])}, mean of {first['phases']:.0f} phase(s))")
        blocks.append(build_table(rows, SPEEDUP_COLUMNS, caption=caption))
    claims = "; ".join(f"{fmt_ratio(claim)} at {res}" for res, claim in PAPER_CLAIMS.items() if res in set(table["resolution"]))
    basis = (f"Basis: {PHASE_BASIS}. HilbertA is its fastest variant at each size; a sparse baseline is the "
             "configuration of its family nearest HilbertA's density.")
    if claims:
        basis += f" The paper claims {claims} over a dense baseline it does not name."
    blocks.append(Paragraph(basis, css="caveat"))
    return Answer("answer-speedup", "How much faster than each baseline?", blocks)


def _correct_card(run: Run) -> Answer:
    frame = run.frame
    checked = frame[frame["passed"].map(lambda value: isinstance(value, bool))]
    if checked.empty:
        return Answer("answer-correct", "Is everything correct?",
                      [Paragraph("No case carries a correctness check.", css="warning")], "warning")
    passed = checked[checked["passed"] == True]  # noqa: E712 (object column)
    ratio = (checked["rel_err"] / checked["tol"]).dropna()
    worst = checked.loc[ratio.idxmax()] if not ratio.empty else None
    line = f"{len(passed)}/{len(checked)} cases correct"
    if worst is not None:
        sign = "≤" if worst["rel_err"] <= worst["tol"] else ">"
        line += (f", max relative error {fmt_sci(worst['rel_err'])} {sign} tolerance {fmt_sci(worst['tol'])} "
                 f"({worst['label']}, {fmt_text(worst['dtype'])})")
    blocks = [Paragraph(line + ".", css="ok" if len(passed) == len(checked) else "bad")]
    wrong = checked[checked["passed"] == False]  # noqa: E712
    if not wrong.empty:
        blocks.append(Paragraph("Incorrect: " + "; ".join(f"{case} (relative error {fmt_sci(err)})" for case, err
                                                          in zip(wrong["case"], wrong["rel_err"])), css="bad"))
    references = ", ".join(sorted({str(r) for r in checked["reference"].dropna()})) or "not recorded"
    rows = ", ".join(fmt_int(r) for r in sorted(set(checked["rows_checked"].dropna()))) or MISSING
    unchecked = len(frame) - len(checked)
    blocks.append(Paragraph(f"Reference: {references}; {rows} query rows per case."
                            + (f" {unchecked} case(s) unchecked (did not run)." if unchecked else ""), css="caveat"))
    return Answer("answer-correct", "Is everything correct?", blocks, "ok" if wrong.empty else "bad")


def _range(values: pd.Series, render) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    low, high = values.min(), values.max()
    return render(low) if low == high else f"{render(low)}–{render(high)}"


def _clocks(frame: pd.DataFrame) -> str:
    kernels = frame[frame["kind"] == "kernel"]
    measured = kernels.dropna(subset=["sm_mhz_median"])
    if not measured.empty:
        reasons = Counter(r for value in measured["throttle_reasons"] if isinstance(value, list) for r in value)
        text = (f"SM {_range(measured['sm_mhz_median'], fmt_mhz_int)} (median of each case's timed calls; "
                f"lowest sample {fmt_mhz_int(measured['sm_mhz_min'].min())})")
        memory = _range(measured["mem_mhz_median"], fmt_mhz_int)
        text += f", memory {memory}" if memory else ""
        return text + (f"; clock-event reasons: {', '.join(reasons)}" if reasons else "")
    energy = _range(kernels["energy_sm_mhz_median"], fmt_mhz_int)
    if energy:
        return f"{NOT_RECORDED} per timed case; SM {energy} during each case's energy window"
    return NOT_RECORDED


def _problem(frame: pd.DataFrame) -> str:
    kernels = frame.dropna(subset=["resolution"])
    kernels = kernels[kernels["kind"] == "kernel"] if (kernels["kind"] == "kernel").any() else kernels
    if kernels.empty:
        return MISSING
    shape = kernels.iloc[0]
    sizes = []
    for resolution in resolution_order(kernels):
        row = kernels[kernels["resolution"] == resolution].iloc[0]
        sizes.append(f"{resolution}: L={fmt_int(row['seq_len'])} ({fmt_int(row['text_tokens'])} text tokens)")
    return (f"B={fmt_int(shape['batch'])}, {fmt_int(shape['heads'])} heads, D={fmt_int(shape['head_dim'])}, "
            f"{fmt_text(shape['dtype'])}; " + "; ".join(sizes))


def _configs(frame: pd.DataFrame) -> str:
    """Launch configs that ran, with the methods that used each."""
    ran = frame[(frame["kind"] == "kernel") & (frame["status"] == STATUS_OK)]
    users: dict[str, list[str]] = {}
    for config, source, label in zip(ran["config"], ran["config_source"], ran["label"]):
        if not isinstance(config, dict):
            continue
        knobs = " ".join(f"{k.split('_')[-1][0]}{v}" for k, v in config.items() if not isinstance(v, bool))
        flags = [k for k, v in config.items() if v is True]
        key = f"{knobs}{' ' + '+'.join(flags) if flags else ''} ({source or 'source not recorded'})"
        users.setdefault(key, [])
        if label not in users[key]:
            users[key].append(label)
    return "; ".join(f"{key}: {', '.join(labels)}" for key, labels in users.items()) or "none recorded"


def _software(run: Run) -> str:
    env = run.env
    parts = [("torch", dig(env, ("versions", "torch"))), ("triton", dig(env, ("versions", "triton"))),
             ("CUDA", env.get("cuda_runtime")), ("driver", env.get("driver_version")),
             ("cuDNN", env.get("cudnn_version"))]
    return " · ".join(f"{name} {value}" for name, value in parts if value not in (None, "")) or NOT_RECORDED


def _timing(results: dict) -> str:
    schedule = results.get("schedule") if isinstance(results.get("schedule"), dict) else {}
    policy = results.get("policy") if isinstance(results.get("policy"), dict) else {}
    kind = schedule.get("kind") or "each case timed in its own block"
    rounds = schedule.get("rounds") or policy.get("rounds")
    flush = schedule.get("l2_flush", policy.get("l2_flush"))
    return (f"{kind}" + (f", {rounds} rounds" if rounds else "")
            + {True: ", L2 flushed before each call", False: ", L2 not flushed"}.get(flush, ""))


def _setup_card(run: Run) -> Answer:
    frame = run.frame
    devices = sorted({int(d) for d in frame["device_index"].dropna()})
    card = (run.card or NOT_RECORDED) + (f" (GPUs {', '.join(map(str, devices))} of one host)" if len(devices) > 1
                                         else "")
    cap = number_or_none(dig(run.env, ("nvml", "power_limit_w")))
    items = [("card", card), ("clocks under load", _clocks(frame)),
             ("power cap", fmt_watts(cap) if cap else NOT_RECORDED), ("software", _software(run)),
             ("problem", _problem(frame)), ("pass", "forward only (no backward pass is timed)"),
             ("launch configs", _configs(frame)), ("timing", _timing(run.results))]
    return Answer("answer-setup", "On what, exactly?", [Definitions(items)])


def _failures_card(run: Run) -> Answer:
    frame = run.frame
    blocks, css = [], "ok"
    if run.results.get("complete") is False:
        blocks.append(Paragraph(f"INCOMPLETE RUN: the run stopped before it finished (results \"complete\": false); "
                                f"this page shows the {len(frame)} case(s) it recorded.", css="bad"))
        css = "bad"
    problems = frame[frame["status"] != STATUS_OK]
    if problems.empty:
        blocks.append(Paragraph(f"All {len(frame)} cases ended ok.", css="ok"))
    else:
        tally = ", ".join(f"{n} {status}" for status, n in Counter(problems["status"]).most_common())
        problems = problems.assign(short_reason=problems["reason"].map(_short))
        blocks.append(build_table(problems, FAILURE_COLUMNS, caption=f"{len(problems)} of {len(frame)} cases: {tally}",
                                  row_class=status_class))
        css = "bad" if problems["status"].isin(["failed", "incorrect"]).any() else ("warning" if css == "ok" else css)
    flags = Counter(flag.what for flag in find_anomalies(frame, run.results))
    if flags:
        total = sum(flags.values())
        blocks.append(Paragraph(f"{total} anomal{'y' if total == 1 else 'ies'} flagged from the data, "
                                f"{len(flags)} kind(s): see Anomalies below.", css="warning"))
    return Answer("answer-failures", "What failed, and why?", blocks, css)


def section(run: Run) -> Section:
    commit = f"commit {run.commit}{' (uncommitted changes)' if run.dirty else ''}" if run.commit else "commit not recorded"
    subtitle = " · ".join([f"suite {run.results.get('suite') or MISSING}", f"run {run.name}",
                           str(run.results.get("created") or "date not recorded"), commit, f"{len(run.frame)} cases"])
    # Two columns, all four cards starting on the first screen: the speedups (one table per size) on the left,
    # with the setup under them when one size leaves room; the short answers on the right.
    speedups = family_speedups(run.frame)
    left, right = [_speedup_card(run, speedups)], [_correct_card(run), _failures_card(run)]
    (left if len(speedups) <= SHORT_SPEEDUP_TABLE else right).append(_setup_card(run))
    return Section(ID, TITLE, [Paragraph(subtitle, css="subtitle"), Stack(left), Stack(right)])
