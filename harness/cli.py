"""``python -m harness``: list methods, run suites, build reports, and the gate, tune and e2e tools.

    python -m harness list
    python -m harness run bench-2048 [--out DIR] [--methods hilberta,sdpa_cudnn] [--resolutions 2048x2048]
                                     [--quick] [--report]
    python -m harness report results/<run-id> [--compare results/<other-run>]
    python -m harness gate --reference A --candidate B      (harness.apps.gate.compare)
    python -m harness tune ...                              (harness.apps.tune)
    python -m harness e2e ...                               (harness.apps.e2e.cli)

Exit codes: 0 ok, 1 a case failed (incorrect output or an error), 2 bad input. The delegated commands
keep their own codes. A delegated module that cannot be imported gives a one-line error, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# command -> (module exposing add_arguments(parser) and run(args) -> int, help)
DELEGATES = {
    "gate": ("harness.apps.gate.compare", "gate a candidate run against a reference run (exit 1 on regression)"),
    "tune": ("harness.apps.tune", "search kernel launch configs and store the best per GPU architecture"),
    "e2e": ("harness.apps.e2e.cli", "time end-to-end Flux transformer steps with each attention method"),
}


def _names(values: Iterable[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (comma- or space-separated on the command line)."""
    if values is None:
        return None
    return [name for value in values for name in value.split(",") if name.strip()]


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- list ------------------------------------------------------------------------------------------

def _cmd_list(args: argparse.Namespace) -> int:
    from baselines.base import Availability
    from baselines.registry import listing
    from harness.core.runner import default_device, optional
    from harness.core.suite import available_suites

    device = args.device or default_device()
    rows = listing(device)
    print(f"methods on {device} (default parameters; `run --methods NAME` accepts these names and families):")
    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        mark = "yes" if row["available"] else "no "
        dense = " [dense reference]" if row["dense_reference"] else ""
        print(f"  {row['name']:<{width}}  {mark}  {row['family']:<12} {row['label']}{dense}"
              + (f"  -- {row['reason']}" if row["reason"] else ""))
    print("measurements:")
    for label, module, probe in (("power (NVML)", "harness.measure.power", "nvml_available"),
                                 ("traffic (ncu)", "harness.measure.traffic", "ncu_available")):
        check, reason = optional(module, probe)
        avail = check() if check else Availability(False, reason)
        print(f"  {label:<14} {'yes' if avail else 'no '}  {avail.reason}")
    print(f"suites: {', '.join(available_suites())}")
    return EXIT_OK


# ---- run ---------------------------------------------------------------------------------------------

def _build_report(results_dir, compare_dir=None) -> int:
    from harness.core.runner import optional

    build_report, reason = optional("reports", "build_report")
    if build_report is None:
        return _fail(f"cannot build the HTML report: {reason}")
    try:
        path = build_report(results_dir, compare_dir=compare_dir)
    except Exception as exc:  # the results stay valid; say what went wrong with the report
        return _fail(f"the HTML report failed: {type(exc).__name__}: {exc}", EXIT_FAILED)
    print(f"report: {path}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.core.results import load_results
    from harness.core.runner import exit_status, print_summary, run_suite
    from harness.core.suite import load_suite

    suite = load_suite(args.suite).select(methods=_names(args.methods), resolutions=_names(args.resolutions),
                                          quick=args.quick)
    try:
        out_dir = run_suite(suite, args.out, device=args.device, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("\ninterrupted: the results file holds the cases finished so far", file=sys.stderr)
        return 130
    results = load_results(out_dir)
    print_summary(results, out_dir)
    code = exit_status(results)
    if args.report:
        code = max(code, _build_report(out_dir))
    return code


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.core.results import load_results

    load_results(args.results_dir)  # a clear error for a missing directory or another schema
    if args.compare:
        load_results(args.compare)
    return _build_report(args.results_dir, args.compare)


# ---- delegated commands ------------------------------------------------------------------------------

def _delegate(sub: argparse._SubParsersAction, command: str, module_name: str, help_text: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # missing or broken: the command explains itself when used
        reason = f"`{command}` is not available: {module_name} cannot be imported ({type(exc).__name__}: {exc})"
        parser = sub.add_parser(command, help=f"{help_text} [unavailable]", add_help=False)
        parser.set_defaults(func=lambda args: _fail(reason), takes_any_arguments=True)
        return
    parser = sub.add_parser(command, help=help_text, description=(module.__doc__ or "").split("\n\n")[0])
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="methods and measurements, and whether each can run here")
    p.add_argument("--device", help="torch device to probe (default: cuda if available, else cpu)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run a suite (a name in suites/ or a path to a .toml)")
    p.add_argument("suite")
    p.add_argument("--out", help="results directory (default: results/<UTC time>-<suite>)")
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help="only these methods (names or families, comma-separated); names not in the suite are added")
    p.add_argument("--resolutions", nargs="+", metavar="WxH", help="replace the suite's resolutions (pixels)")
    p.add_argument("--quick", action="store_true", help="short timing budgets: a look, not numbers to quote")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--report", action="store_true", help="write the HTML report at the end and print its path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="turn a results directory into a self-contained HTML report")
    p.add_argument("results_dir")
    p.add_argument("--compare", metavar="DIR", help="a second results directory to compare against")
    p.set_defaults(func=_cmd_report)

    for command, (module_name, help_text) in DELEGATES.items():
        _delegate(sub, command, module_name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.core.results import ResultsError
    from harness.core.suite import SuiteError

    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "takes_any_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except (SuiteError, ResultsError, FileExistsError, ValueError) as exc:
        return _fail(str(exc))
