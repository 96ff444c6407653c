"""The performance gate: does a candidate run regress against a reference run of the same suite?

`compare` matches the timed rows (kind ``kernel`` or ``e2e``) of two results files by their ``case`` id and
gives each case one outcome (`OUTCOMES`). A case regresses only when the *whole* bootstrap confidence
interval of the ratio candidate / reference lies above ``1 + threshold`` AND a Mann-Whitney U test agrees
(p < `ALPHA`): noise alone, or a change smaller than the threshold, never fails a merge (asv's rule, with a
CI instead of a bare ratio). The suite's ``[gate] mode`` (or ``--mode``) applies the rule to absolute
times, to times relative to the in-run anchor (the fastest dense kernel of the problem: clock drift between
runs cancels), or to both at once (`harness.apps.gate.ratio`). Incorrect output, a case that ran in the
reference but fails or vanishes in the candidate, also fail. Runs from different GPU models or drivers, of
different suites, or whose rows of one case id are different problems are refused (exit 2) unless forced:
their timings say nothing about the code. A run whose A/A control (one method timed twice) disagreed with
itself is unusable (exit 2, never forced): it measured noise. Malformed input is refused with the file and
field (`harness.apps.gate.inputs`). A run that stopped early (``complete: false``) is named in the verdict.

References live in ``suites/references/<gpu-slug>/<suite>.json`` (see suites/references/README.md);
``--reference auto`` picks the one for the candidate's GPU and suite, and ``--update-reference`` stores
the candidate there, on purpose and saying so (an incomplete run, or one with failed cases, only with
``--force``), with the per-case medians of the last runs stored there (and of ``--history`` runs): each
case's between-run spread is shown next to its CI (`harness.apps.gate.references`). The default threshold
and the mode come from ``--threshold`` (finite, > 0) and ``--mode``, else the ``[gate]`` table of this
repository's suite of that name, else the one a stored reference recorded; never from a suite path that a
results file names. ``[gate.overrides]`` (case-id glob -> percent) set per-case thresholds.

Outputs: exit code (0 pass, 1 fail, 2 unusable input or refused), ``verdict.json`` (the mode, the anchors,
and per case the absolute and the anchored numbers), ``summary.md`` (a markdown table for
``$GITHUB_STEP_SUMMARY``, worst case first), and the same table printed.
A/B mode (``--ab REV_A REV_B``) times two git revisions on one card and gates them the same way
(`harness.apps.gate.abtest`).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.apps.gate import abtest, inputs, ratio, references
from harness.apps.gate.inputs import (DEFAULT_THRESHOLD_PCT, check_threshold, env_value, gated_rows,
                                      is_incomplete, is_incorrect, run_info, stored_reference_path)
from harness.apps.gate.ratio import ALPHA, DEFAULT_MODE, MODES
from harness.apps.gate.references import spread_cell, store_reference

EXIT_PASS, EXIT_FAIL, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class Outcome:
    """What the gate concluded about one case; ``rank`` orders the summary, worst first."""

    name: str
    fails: bool
    rank: int
    meaning: str


OUTCOMES = {o.name: o for o in (
    Outcome("incorrect", True, 0, "the candidate's output failed the correctness check"),
    Outcome("failed", True, 1, "ran in the reference, did not run in the candidate"),
    Outcome("missing", True, 2, "in the reference, absent from the candidate"),
    Outcome("regression", True, 3, "slower: the whole CI is above 1 + threshold and p < 0.01"),
    Outcome("inconclusive", False, 4, "too few samples for the rank test to ever reach p < 0.01"),
    Outcome("missing-allowed", False, 5, "absent or unavailable in the candidate, and allowed to be"),
    Outcome("unchanged", False, 6, "no change beyond the threshold that the data can show"),
    Outcome("improvement", False, 7, "faster: the whole CI is below 1 - threshold and p < 0.01"),
    Outcome("new", False, 8, "only in the candidate"),
    Outcome("not-compared", False, 9, "did not run in the reference"),
)}


# ---- per-case decision ----------------------------------------------------------------------------------

def _matches_any(case: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(case, pattern) for pattern in patterns)


def _untimed_outcome(ref: Mapping | None, cand: Mapping | None, allowed_missing: bool) -> dict | None:
    """The outcome of a case that is not timed in both runs (None when it is: `ratio.timed_outcome`)."""
    if cand is not None and is_incorrect(cand):
        return {"outcome": "incorrect", "reason": cand.get("reason") or "correctness check failed"}
    if ref is None:
        return {"outcome": "new", "reason": None}
    if ref.get("status") != "ok":
        return {"outcome": "not-compared", "reason": f"reference status {ref.get('status')}"}
    if cand is None:
        return {"outcome": "missing-allowed" if allowed_missing else "missing",
                "reason": "absent from the candidate"}
    if cand.get("status") != "ok":
        reason = f"candidate status {cand.get('status')}: {cand.get('reason') or 'no reason given'}"
        # a method that cannot run here (optional package absent) counts as missing, a crash never does
        if cand.get("status") == "unavailable" and allowed_missing:
            return {"outcome": "missing-allowed", "reason": reason}
        return {"outcome": "failed", "reason": reason}
    return None


# ---- the comparison -------------------------------------------------------------------------------------

def _refusal(reference: Mapping, candidate: Mapping, message: str, verdict: str = "refused") -> dict:
    return {"schema": 1, "verdict": verdict, "exit_code": EXIT_UNUSABLE, "message": message,
            "reference": run_info(reference), "candidate": run_info(candidate), "cases": [], "counts": {}}


def _aa_disagreement(reference: Mapping, candidate: Mapping) -> str | None:
    """A run whose A/A control (one method timed twice) disagreed with itself measured noise, not code."""
    named = [f"the {label}'s {inputs.describe_aa_pair(pair)}"
             for label, results in (("reference", reference), ("candidate", candidate))
             for pair in inputs.aa_disagreements(results)]
    if not named:
        return None
    return (f"Unusable: the A/A control disagreed with itself ({'; '.join(named)}): the same method timed "
            "twice in one run differed beyond the limit, so its timings cannot show a change of the code. "
            "Re-run it.")


def _incomplete_note(reference: Mapping, candidate: Mapping) -> str | None:
    stopped = [label for label, results in (("reference", reference), ("candidate", candidate))
               if is_incomplete(results)]
    if not stopped:
        return None
    return (f"INCOMPLETE: the {' and the '.join(stopped)} run{'s' if len(stopped) > 1 else ''} stopped before "
            "the end (complete: false); cases it never ran are 'new' or 'missing' here, not compared.")


def compare(reference: Mapping, candidate: Mapping, threshold_pct: float = DEFAULT_THRESHOLD_PCT,
            per_case: Mapping[str, float] | None = None, allow_missing: Iterable[str] = (),
            force: bool = False, level: float = 0.95, seed: int = 0, mode: str = DEFAULT_MODE) -> dict:
    """Gate ``candidate`` against ``reference`` (both loaded results dicts) in ``mode`` (`MODES`); returns the
    verdict dict.

    ``per_case`` maps case-id globs to thresholds (percent) that override ``threshold_pct`` (the first
    match wins, as in a suite's ``[gate.overrides]``);
    ``allow_missing`` holds case ids or glob patterns that may be absent (or unavailable) in the candidate.
    The verdict's ``exit_code`` is 0 (pass), 1 (fail) or 2 (refused: different GPU/driver, suite or problems,
    nothing to compare; unusable: an A/A control that disagreed). Malformed input raises ValueError naming
    the field.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ratio.check_mode(mode, "mode")
    from harness.core.cases import GateThresholds

    thresholds = GateThresholds(check_threshold(threshold_pct, "threshold"),
                                {k: check_threshold(v, f"threshold of {k!r}") for k, v in (per_case or {}).items()})
    allow_missing = tuple(allow_missing)
    ref_rows, cand_rows = gated_rows(reference, "the reference"), gated_rows(candidate, "the candidate")
    noisy = _aa_disagreement(reference, candidate)
    if noisy:
        return _refusal(reference, candidate, noisy, verdict="unusable")
    mismatches = inputs.mismatches(reference, candidate, ref_rows, cand_rows)
    if mismatches and not force:
        return _refusal(reference, candidate, f"Refused: {mismatches[0]}")
    if not ref_rows and not cand_rows:
        return _refusal(reference, candidate, "Refused: neither run has kernel or e2e cases to compare.")

    ref_anchors, cases, history = ratio.anchors(ref_rows), [], references.history_of(reference)
    for case in [*ref_rows, *(c for c in cand_rows if c not in ref_rows)]:
        ref, cand = ref_rows.get(case), cand_rows.get(case)
        threshold = thresholds.threshold_for(case)
        row = ref or cand
        outcome = (_untimed_outcome(ref, cand, _matches_any(case, allow_missing))
                   or ratio.timed_outcome(ref, cand, ref_anchors.get(ratio.anchor_key(row)), ref_rows, cand_rows,
                                          mode, threshold, level, seed))
        entry = {"case": case, "kind": row.get("kind"), "method": row.get("method"), "threshold_pct": threshold,
                 **outcome}
        entry["fails"] = OUTCOMES[entry["outcome"]].fails
        references.add_between_runs(entry, history)
        cases.append(entry)
    cases.sort(key=lambda e: (OUTCOMES[e["outcome"]].rank, -(ratio.deciding_ratio(e, mode) or 0.0), e["case"]))

    counts = Counter(e["outcome"] for e in cases)
    failing = sum(e["fails"] for e in cases)
    passed = failing == 0
    tally = ", ".join(f"{counts[name]} {name}" for name in OUTCOMES if counts[name])
    incomplete = _incomplete_note(reference, candidate)
    message = (f"{'PASS' if passed else 'FAIL'}: {failing} of {len(cases)} cases fail ({tally})"
               + (f". {incomplete}" if incomplete else ""))
    noisy_runs = references.spread_warning(cases, mode)
    warnings = ([f"Forced: {m}" for m in mismatches] + ([incomplete] if incomplete else [])
                + ratio.anchor_warnings(mode, cases) + ([noisy_runs] if noisy_runs else []))
    return {"schema": 1, "verdict": "pass" if passed else "fail", "exit_code": EXIT_PASS if passed else EXIT_FAIL,
            "message": message, "warning": " ".join(warnings) or None, "forced": bool(mismatches),
            "incomplete": [label for label, r in (("reference", reference), ("candidate", candidate))
                           if is_incomplete(r)],
            "threshold_pct": threshold_pct, "per_case_thresholds": dict(thresholds.overrides),
            "allow_missing": list(allow_missing), "alpha": ALPHA, "level": level, "mode": mode,
            "anchors": ratio.anchor_table(ref_rows, cand_rows), "history": references.history_summary(history),
            "spread_over_threshold": references.over_threshold(cases, mode),
            "reference": run_info(reference), "candidate": run_info(candidate), "counts": dict(counts),
            "cases": cases}


# ---- outputs --------------------------------------------------------------------------------------------

def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _note(entry: Mapping, mode: str) -> str:
    anchored = entry.get("anchored") or {}
    if entry.get("ratio") is None:
        note = entry.get("reason") or ""
    elif anchored.get("outcome") == "n/a" and mode != "absolute":
        note = f"judged on absolute time: {anchored['reason']}"
    elif mode == "both" and anchored.get("outcome") != entry.get("absolute_outcome"):
        note = f"absolute: {entry.get('absolute_outcome')}, vs anchor: {anchored.get('outcome')}"
    else:
        note = ""
    return note.replace("|", "\\|")


def _run_line(info: Mapping) -> str:
    return (f"run `{info.get('run_id')}` (suite {info.get('suite')}) on {info.get('gpu_name') or 'no GPU'}, "
            f"driver {info.get('driver') or 'n/a'}")


def summary_markdown(verdict: Mapping) -> str:
    """The verdict as markdown: a headline, the two runs, the rule, and one table row per case, worst first."""
    head = {"pass": "✅ Performance gate passed", "fail": "❌ Performance gate failed",
            "refused": "⚠️ Performance gate refused", "unusable": "⚠️ Performance gate: run unusable"}[verdict["verdict"]]
    lines = [f"## {head}", "", verdict["message"], ""]
    if verdict.get("warning"):
        lines += [f"> **{verdict['warning']}**", ""]
    lines += [f"- Reference: {_run_line(verdict['reference'])}", f"- Candidate: {_run_line(verdict['candidate'])}"]
    if verdict["verdict"] in ("refused", "unusable"):
        return "\n".join(lines) + "\n"
    mode = verdict.get("mode", DEFAULT_MODE)
    lines += [f"- Rule: regression when the whole {verdict['level']:.0%} CI of the median ratio (candidate / "
              f"reference) is above 1 + threshold and Mann-Whitney p < {verdict['alpha']}; "
              f"default threshold {verdict['threshold_pct']:g}%", *ratio.mode_lines(verdict),
              references.history_line(verdict), "",
              "| Case | Outcome | Ratio | CI | Between runs | p | Vs anchor | CI vs anchor | Between runs vs anchor "
              "| Ref median ms | Cand median ms | Threshold | Note |",
              "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for e in verdict["cases"]:
        outcome = f"**{e['outcome']}**" if e["fails"] else e["outcome"]
        anchored = e.get("anchored") or {}
        lines.append(f"| `{e['case']}` | {outcome} | {_fmt(e.get('ratio'), '.3f')} | {_ci(e.get('ci'))} "
                     f"| {spread_cell(e.get('between_runs'))} | {_fmt(e.get('p_value'), '.2g')} "
                     f"| {_fmt(anchored.get('ratio'), '.3f')} | {_ci(anchored.get('ci'))} "
                     f"| {spread_cell(anchored.get('between_runs'))} | {_fmt(e.get('ref_median_ms'), '.4g')} "
                     f"| {_fmt(e.get('cand_median_ms'), '.4g')} | {e['threshold_pct']:g}% | {_note(e, mode)} |")
    return "\n".join(lines) + "\n"


def write_outputs(verdict: Mapping, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``verdict.json`` and ``summary.md`` into ``out_dir``; returns their paths."""
    from harness.core.results import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdict_path, summary_path = out / "verdict.json", out / "summary.md"
    write_json_atomic(verdict_path, verdict)
    summary_path.write_text(summary_markdown(verdict))
    return verdict_path, summary_path


# ---- command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", metavar="A",
                        help="results dir or file, a stored reference, or 'auto' (the stored reference for "
                             "the candidate's GPU model and suite)")
    parser.add_argument("--candidate", metavar="B", help="results dir or file to gate")
    parser.add_argument("--threshold", type=float, default=None, metavar="PCT",
                        help=f"default threshold in percent, finite and > 0 (else the [gate] threshold_pct of "
                             f"this repository's suite, else {DEFAULT_THRESHOLD_PCT:g})")
    parser.add_argument("--mode", choices=tuple(MODES), default=None,
                        help="absolute times, times relative to the in-run anchor (the fastest dense kernel of "
                             "the problem), or both must agree (else the [gate] mode of this repository's "
                             f"suite, else {DEFAULT_MODE})")
    parser.add_argument("--allow-missing", nargs="*", default=[], metavar="CASE",
                        help="case ids or glob patterns that may be absent or unavailable in the candidate")
    parser.add_argument("--force", action="store_true",
                        help="compare runs from different GPU models, drivers, suites or problems; store an "
                             "incomplete run or one with failed cases as the reference, or take such runs into "
                             "its history")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the ratio's CI")
    parser.add_argument("--out", metavar="DIR",
                        help="where verdict.json and summary.md go (default: the candidate's results dir)")
    references.add_arguments(parser)
    abtest.add_arguments(parser)


def _default_out(candidate: str) -> Path:
    path = Path(candidate)
    return path if path.is_dir() else path.parent


def gate_settings(args: argparse.Namespace, suite: str | None, stored: Mapping | None = None) -> dict:
    """compare()'s keyword arguments: ``--threshold`` (finite, > 0) and ``--mode``, else the ``[gate]`` table
    of this repository's suite named ``suite``, else the one recorded in ``stored`` (a stored reference)
    (`harness.apps.gate.inputs.trusted_thresholds`, `.trusted_mode`)."""
    default_pct, per_case, source = inputs.trusted_thresholds(suite, stored)
    if args.threshold is not None:
        default_pct, source = check_threshold(args.threshold, "--threshold"), "--threshold"
    mode, mode_source = (args.mode, "--mode") if args.mode else inputs.trusted_mode(suite, stored)
    print(f"gate: default threshold {default_pct:g}% from {source}"
          + (f", {len(per_case)} per-case overrides" if per_case else "") + f"; mode {mode} from {mode_source}")
    return {"threshold_pct": default_pct, "per_case": per_case, "allow_missing": args.allow_missing,
            "force": args.force, "level": args.level, "mode": mode}


def report(verdict: Mapping, out_dir: str | os.PathLike) -> int:
    """Write the outputs, print the table and where it went; returns the verdict's exit code."""
    verdict_path, summary_path = write_outputs(verdict, out_dir)
    print(summary_markdown(verdict))
    print(f"wrote {verdict_path} and {summary_path}")
    return verdict["exit_code"]


def _load(path: str | os.PathLike) -> dict:
    from harness.core.results import load_results

    try:
        return load_results(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _gate_files(args: argparse.Namespace) -> int:
    candidate = _load(args.candidate)
    gated_rows(candidate, str(args.candidate))  # malformed input: name the file and the field
    ref_path = stored_reference_path(candidate) if args.reference in (None, "auto") else Path(args.reference)
    code = EXIT_PASS
    if ref_path.exists():
        reference = _load(ref_path)
        gated_rows(reference, str(ref_path))
        stored = ref_path.resolve().is_relative_to(inputs.REFERENCES_DIR.resolve())
        verdict = compare(reference, candidate, **gate_settings(args, reference.get("suite"),
                                                                reference if stored else None))
        verdict["reference"]["source"], verdict["candidate"]["source"] = str(ref_path), str(args.candidate)
        code = report(verdict, args.out or _default_out(args.candidate))
    elif not args.update_reference:
        print(f"gate: no reference at {ref_path}. To make this run the reference for its GPU and suite: "
              f"python -m harness gate --candidate {args.candidate} --update-reference", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.update_reference:  # a deliberate refresh: the comparison above was for information
        _store(args, candidate)
        return EXIT_PASS
    return code


def _store(args: argparse.Namespace, candidate: Mapping) -> None:
    """``--update-reference`` (with ``--history``): store the candidate and say what its history holds."""
    seeded = [(_load(path), str(path)) for path in args.history]
    stored_path, history, note = store_reference(candidate, str(args.candidate), force=args.force, history=seeded)
    if note:
        print(f"gate: {note}")
    runs, gpu = ", ".join(str(h.get("run_id")) for h in history), env_value(candidate, "gpu_name") or "no GPU"
    print(f"gate: stored run {candidate.get('run_id')} as the reference for {gpu} / {candidate.get('suite')} in "
          f"{stored_path}, with the medians of {len(history)} run(s) ({runs}) for the between-run spread (commit "
          "it to make CI gate against it)")


def _gate_ab(args: argparse.Namespace) -> int:
    """``gate --ab REV_A REV_B --suite NAME``: time both revisions (`abtest.run`), then gate B against A."""
    try:
        settings = abtest.AbSettings.from_args(args)
        results = abtest.run(settings)
        verdict = compare(results["a"], results["b"], **gate_settings(args, settings.suite))
    except (abtest.AbTestError, OSError, ValueError) as exc:
        print(f"gate --ab: {exc}")
        return EXIT_UNUSABLE
    verdict["reference"]["source"], verdict["candidate"]["source"] = f"{settings.rev_a} (a)", f"{settings.rev_b} (b)"
    return report(verdict, settings.out)


def run(args: argparse.Namespace) -> int:
    if args.ab:
        return _gate_ab(args)
    if args.history and not args.update_reference:
        print("error: gate: --history goes with --update-reference (it seeds the stored reference's history)",
              file=sys.stderr)
        return EXIT_UNUSABLE
    if not args.candidate or not (args.reference or args.update_reference):
        print("error: gate: give --candidate and --reference (or --update-reference), or --ab REV_A REV_B "
              "--suite NAME", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        return _gate_files(args)
    except (OSError, ValueError) as exc:
        print(f"error: gate: unusable input: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
