"""What the gate accepts as input: well-formed runs of the same problems, and thresholds it can trust.

- `gated_rows`: the kernel and e2e rows of a results dict, each checked against the results schema and
  with finite, positive samples (and one round per sample where ``samples_round`` is given), and the run's
  ``aa_pairs``; anything else is a ValueError naming the file (or run) and the field.
- `aa_disagreements`: the A/A pairs (one method timed twice in the run) that did not agree: such a run
  measured noise and is unusable for the gate.
- `fingerprint_mismatch`: two runs are comparable only when they ran the same suite and, case by case, the
  same problem (`PROBLEM_KEYS`: shape, dtype, heads, ...) with the same method parameters (tiles, centre,
  curve, ...); a case id alone proves nothing (a smoke run has 2 heads in fp32, bench-ci 24 in bf16).
- `trusted_thresholds`, `trusted_mode`: the ``[gate]`` table of this repository's ``suites/<name>.toml`` (by
  name: a path that a results file names is never read), else the one recorded in a stored reference, else
  defaults.
- `storage_refusals`: why a run must not become a stored reference (incomplete, failed or incorrect cases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from harness import PROJECT_ROOT
from harness.apps.gate.ratio import DEFAULT_MODE, check_mode
from harness.core.paths import check_component, slugify

DEFAULT_THRESHOLD_PCT = 5.0
GATED_KINDS = ("kernel", "e2e")
# What two runs must share, as (label, fingerprint keys: the first one present counts).
COMPARABLE_ENV = {"gpu_name": ("GPU model", ("gpu_name",)), "driver": ("driver", ("driver_version", "driver"))}
# What makes two rows with one case id the same problem: the problem's fields, then the method's parameters.
PROBLEM_KEYS = ("width", "height", "text_tokens", "batch", "heads", "head_dim", "dtype", "layer")
REFERENCES_DIR = PROJECT_ROOT / "suites" / "references"


# ---- the runs ----------------------------------------------------------------------------------------------

def gpu_slug(gpu_name: str | None) -> str:
    """Folder name of a GPU model: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; no GPU -> cpu."""
    return (slugify(gpu_name) if isinstance(gpu_name, str) else "") or "cpu"


def suite_name(results: Mapping, source: str) -> str | None:
    """The run's suite as a plain name (a suite given as a path counts by its file name), checked."""
    suite = results.get("suite")
    if suite is None:
        return None
    if not isinstance(suite, str):
        raise ValueError(f"{source}: suite: expected a suite name, got {suite!r}")
    return check_component(Path(suite).stem, "slug", f"{source}: suite")


def stored_reference_path(results: Mapping) -> Path:
    """Where the reference for this run's GPU model and suite is stored."""
    name = suite_name(results, "the candidate")
    if not name:
        raise ValueError("the candidate results name no suite, so no stored reference can be found for "
                         "them; pass --reference PATH")
    return REFERENCES_DIR / gpu_slug(env_value(results, "gpu_name")) / f"{name}.json"


def env_value(results: Mapping, what: str):
    env = results.get("env") if isinstance(results.get("env"), Mapping) else {}
    return next((env[key] for key in COMPARABLE_ENV[what][1] if env.get(key) is not None), None)


def run_info(results: Mapping) -> dict:
    return {"run_id": results.get("run_id"), "suite": results.get("suite"), "created": results.get("created"),
            "complete": results.get("complete"), **{what: env_value(results, what) for what in COMPARABLE_ENV}}


def is_incorrect(row: Mapping) -> bool:
    correctness = row.get("correctness") or {}
    return row.get("status") == "incorrect" or correctness.get("passed") is False


def is_incomplete(results: Mapping) -> bool:
    """The run says it stopped before its end (``complete: false``); files that do not say are not judged."""
    return results.get("complete") is False


def _sample_problem(row: Mapping) -> str | None:
    samples = row.get("samples_ms")
    if samples is None:
        return None
    bad = [s for s in samples if isinstance(s, bool) or not isinstance(s, (int, float))
           or not math.isfinite(s) or s <= 0]
    if bad:
        return f"samples_ms holds {bad[0]!r}, expected positive finite milliseconds"
    rounds = row.get("samples_round")
    if rounds is not None and len(rounds) != len(samples):
        return f"samples_round has {len(rounds)} rounds for {len(samples)} samples_ms, expected one per sample"
    return None


def _aa_problem(results: Mapping) -> str | None:
    pairs = results.get("aa_pairs")
    if pairs is None:
        return None
    if not isinstance(pairs, list):
        return f"aa_pairs: expected a list, got {pairs!r:.60}"
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Mapping) or not isinstance(pair.get("agree"), bool):
            return f"aa_pairs[{i}]: expected an object with a true/false 'agree', got {pair!r:.80}"
    return None


def aa_disagreements(results: Mapping) -> list[Mapping]:
    """The run's A/A pairs that disagreed (``agree: false``), in order."""
    return [pair for pair in results.get("aa_pairs") or () if pair.get("agree") is False]


def describe_aa_pair(pair: Mapping) -> str:
    """``A/A pair a vs b: ratio 1.031, CI [1.018, 1.044], limit 1.5 %`` from an ``aa_pairs`` entry."""
    def num(value, spec: str = ".4g") -> str:
        return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"

    ci = pair.get("ci95") if isinstance(pair.get("ci95"), list) and len(pair["ci95"]) == 2 else [None, None]
    return (f"A/A pair {pair.get('a')} vs {pair.get('b')}: ratio {num(pair.get('ratio'))}, "
            f"CI [{num(ci[0])}, {num(ci[1])}], limit {num(pair.get('limit_pct'), 'g')} %")


def gated_rows(results: Mapping, source: str) -> dict[str, dict]:
    """case id -> row of the kernel and e2e rows; ValueError ``"<source>: <field>: ..."`` for malformed input."""
    from harness.core.schema import row_problems

    if not isinstance(results, Mapping) or not isinstance(results.get("cases"), list):
        raise ValueError(f"{source} is not a results file: expected a dict with a 'cases' list")
    for field in ("env", "policy"):
        if results.get(field) is not None and not isinstance(results[field], Mapping):
            raise ValueError(f"{source}: {field}: expected an object, got {results[field]!r:.60}")
    if (problem := _aa_problem(results)) is not None:
        raise ValueError(f"{source}: {problem}")
    rows: dict[str, dict] = {}
    for i, row in enumerate(results["cases"]):
        problems = row_problems(row)
        if isinstance(row, Mapping) and row.get("kind") in GATED_KINDS and not problems:
            problems = [p for p in [_sample_problem(row)] if p]
        if problems:
            raise ValueError(f"{source}: cases[{i}]: {problems[0]}")
        if row["kind"] not in GATED_KINDS:
            continue
        if row["case"] in rows:
            raise ValueError(f"{source}: cases[{i}]: two rows with case id {row['case']!r}")
        rows[row["case"]] = row
    return rows


# ---- comparability -----------------------------------------------------------------------------------------

def env_mismatch(reference: Mapping, candidate: Mapping) -> str | None:
    ref, cand = run_info(reference), run_info(candidate)
    differ = [label for what, (label, _) in COMPARABLE_ENV.items() if ref[what] != cand[what]]
    if not differ:
        return None
    return (f"the reference ran on {ref['gpu_name']} (driver {ref['driver']}) and the candidate on "
            f"{cand['gpu_name']} (driver {cand['driver']}): timings from a different {' and '.join(differ)} "
            "are not comparable. Store a reference from this card (--update-reference) or pass --force to "
            "compare anyway.")


def _row_fingerprint(row: Mapping) -> dict:
    problem = row.get("problem") or {}
    return {**{f"problem.{key}": problem.get(key) for key in PROBLEM_KEYS},
            **{f"params.{key}": value for key, value in sorted((row.get("params") or {}).items())}}


def fingerprint_mismatch(reference: Mapping, candidate: Mapping, ref_rows: Mapping, cand_rows: Mapping) -> str | None:
    """Why the two runs are not the same problems (suite, or the first case whose problem or method
    parameters differ), or None."""
    ref_suite, cand_suite = suite_name(reference, "the reference"), suite_name(candidate, "the candidate")
    if ref_suite != cand_suite:
        return (f"the reference ran suite {ref_suite!r} and the candidate suite {cand_suite!r}: different "
                "suites are different problems. Gate against a reference of the same suite, or pass --force.")
    for case in sorted(set(ref_rows) & set(cand_rows)):
        ref, cand = _row_fingerprint(ref_rows[case]), _row_fingerprint(cand_rows[case])
        for field in dict.fromkeys([*ref, *cand]):  # the problem's shape first, then the method's parameters
            if ref.get(field) != cand.get(field):
                return (f"case {case!r} is a different problem in the two runs ({field}: reference "
                        f"{ref.get(field)!r}, candidate {cand.get(field)!r}); pass --force to compare anyway.")
    return None


def mismatches(reference: Mapping, candidate: Mapping, ref_rows: Mapping, cand_rows: Mapping) -> list[str]:
    """Why the two runs are not comparable (another GPU model or driver, `env_mismatch`; other problems,
    `fingerprint_mismatch`): an empty list when they are."""
    return [m for m in (env_mismatch(reference, candidate),
                        fingerprint_mismatch(reference, candidate, ref_rows, cand_rows)) if m]


# ---- thresholds --------------------------------------------------------------------------------------------

def check_threshold(value, field: str) -> float:
    """A threshold in percent: a finite number > 0, else ValueError naming ``field``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{field}: {value!r} is not a threshold; expected a finite percentage > 0")
    return float(value)


def _repo_gate(suite: str | None):
    """``(the [gate] table of this repository's suites/<name>.toml, where)`` for the suite's name (of a path,
    only its file name counts), or None when there is no such suite here."""
    from harness.core.suite import SUITES_DIR, SuiteError, load_suite

    try:
        name = suite_name({"suite": suite}, "the suite")
    except ValueError:
        name = None
    path = SUITES_DIR / f"{name}.toml" if name else None
    if path is None or not path.is_file():
        return None
    try:
        return load_suite(path).gate, f"suites/{path.name}"
    except (SuiteError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _recorded_gate(stored: Mapping | None) -> Mapping:
    return ((stored.get("suite_config") or {}).get("gate") or {}) if stored else {}


STORED_GATE = "the stored reference: suite_config.gate"


def trusted_thresholds(suite: str | None, stored: Mapping | None = None) -> tuple[float, dict, str]:
    """``(threshold_pct, per-case overrides, where they came from)``: this repository's
    ``suites/<name>.toml`` for the suite's name (of a path, only its file name counts), else the ``[gate]``
    table recorded in ``stored`` (a stored reference), else the defaults."""
    repo = _repo_gate(suite)
    if repo is not None:
        gate, where = repo
        return gate.threshold_pct, dict(gate.overrides), where
    recorded = _recorded_gate(stored)
    if not recorded:
        return DEFAULT_THRESHOLD_PCT, {}, "the default"
    overrides = recorded.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{STORED_GATE}.overrides: expected an object, got {overrides!r:.60}")
    return (check_threshold(recorded.get("threshold_pct"), f"{STORED_GATE}.threshold_pct"),
            {str(k): check_threshold(v, f"{STORED_GATE}.overrides[{k!r}]") for k, v in overrides.items()},
            "the stored reference")


def trusted_mode(suite: str | None, stored: Mapping | None = None) -> tuple[str, str]:
    """``(gate mode, where it came from)``, from the same places as `trusted_thresholds`; a suite or a
    stored reference that names no mode means the default (`DEFAULT_MODE`)."""
    repo = _repo_gate(suite)
    if repo is not None:
        gate, where = repo
        return check_mode(getattr(gate, "mode", DEFAULT_MODE), f"{where}: [gate] mode"), where
    recorded = _recorded_gate(stored)
    if "mode" in recorded:
        return check_mode(recorded["mode"], f"{STORED_GATE}.mode"), "the stored reference"
    return DEFAULT_MODE, "the default"


# ---- stored references --------------------------------------------------------------------------------------

def storage_refusals(candidate: Mapping, rows: Mapping[str, Mapping]) -> tuple[list[str], list[str]]:
    """``(always, unless_forced)``: why this run must never, or not without --force, become a reference."""
    incorrect = sorted(case for case, row in rows.items() if is_incorrect(row))
    always = [f"incorrect cases: {', '.join(incorrect)}"] if incorrect else []
    if not any(row.get("status") == "ok" for row in rows.values()):
        always.append("not a single ok kernel or e2e case")
    forced = []
    if is_incomplete(candidate):
        forced.append("the run is incomplete (complete: false): it stopped before all its cases ran, and a "
                      "reference missing cases would let later gates call them 'new' and pass")
    failed = sorted(case for case, row in rows.items() if row.get("status") == "failed")
    if failed:
        forced.append(f"failed cases ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}) "
                      "would never be gated")
    return always, forced
