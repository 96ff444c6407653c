"""``python -m harness``: list methods, run suites, build reports, and the gate, tune and e2e tools.

    python -m harness list
    python -m harness run bench-2048 [--out DIR] [--methods hilberta,sdpa_cudnn] [--resolutions 2048x2048]
                                     [--quick] [--report]
    python -m harness serve [--gpus N] [--status | --stop]   (warm workers: later runs skip the start-up)
    python -m harness report results/<run-id> [--compare results/<other-run>]
    python -m harness gate --reference A --candidate B      (harness.apps.gate.compare)
    python -m harness tune ...                              (harness.apps.tune)
    python -m harness e2e ...                               (harness.apps.e2e.cli)

Exit codes: 0 ok, 1 a case failed (incorrect output or an error), 2 bad input. The delegated commands
keep their own codes. Bad input never ends in a traceback: one line ``error: ...`` on stderr and exit 2,
naming the file or option (an unknown ``--device``, an ``--out`` that cannot be created or is taken by
another run, an empty ``--methods`` or ``--resolutions`` list, an unreadable or non-UTF-8 suite file, a
resolution whose inputs alone exceed the device's memory, a Python without the project's dependencies).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEVICE_TYPES = ("cpu", "cuda")
# Packages without which no command runs: a Python lacking one gets the install step, not a traceback.
REQUIRED_MODULES = ("torch", "triton", "numpy")
INSTALL_HINT = ("run the harness with a Python that has the project installed: `pip install -e .` in the "
                "project root, or `nox -s smoke` (README.md, \"The harness directly\")")
# command -> (module exposing add_arguments(parser) and run(args) -> int, help)
DELEGATES = {
    "gate": ("harness.apps.gate.compare", "gate a candidate run against a reference run (exit 1 on regression)"),
    "tune": ("harness.apps.tune", "search kernel launch configs and store the best per GPU architecture"),
    "e2e": ("harness.apps.e2e.cli", "time end-to-end Flux transformer steps with each attention method"),
}
COMMANDS = ("list", "run", "report", *DELEGATES)


class BadInput(ValueError):
    """Input the command cannot use; its message is the one line the user sees."""


def _names(values: Iterable[str] | None, option: str) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (comma- or space-separated on the command line); an option
    given with no name at all (``--methods ,``) is an error, never an empty run."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise BadInput(f"{option} {' '.join(map(repr, values))} names nothing; give at least one")
    return names


def _device(text: str | None):
    """The torch device of ``--device`` (default: cuda if available, else cpu), checked here."""
    import torch

    from harness.core.lifecycle import default_device

    if text is None:
        return default_device()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise BadInput(f"unknown --device {text!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise BadInput(f"--device {text}: torch sees {count} CUDA device(s) here")
    return device


def _load_suite(name: str, sections=None):
    """`harness.core.suite.load_suite`, with an unreadable or non-UTF-8 file named in one line."""
    from harness.core.suite import load_suite, suite_path

    path = suite_path(name)
    try:
        return load_suite(path, sections=sections)
    except UnicodeDecodeError as exc:
        raise BadInput(f"suite file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"cannot read suite file {path}: {exc.strerror or exc}") from None


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- list ------------------------------------------------------------------------------------------

def _cmd_list(args: argparse.Namespace) -> int:
    from baselines.base import Availability
    from baselines.registry import listing
    from harness.core.runner import optional
    from harness.core.suite import available_suites

    device = _device(args.device)
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

def _build_report(results_dir, compare_dir=None, verdict=None) -> int:
    from harness.core.runner import optional

    build_report, reason = optional("reports", "build_report")
    if build_report is None:
        return _fail(f"cannot build the HTML report: {reason}")
    try:
        path = build_report(results_dir, compare_dir=compare_dir, verdict=verdict)
    except Exception as exc:  # the results stay valid; say what went wrong with the report
        return _fail(f"the HTML report failed: {type(exc).__name__}: {exc}", EXIT_FAILED)
    print(f"report: {path}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    methods, resolutions = _names(args.methods, "--methods"), _names(args.resolutions, "--resolutions")
    if args.gpus is not None and args.gpus < 1:
        raise BadInput(f"--gpus must be at least 1, got {args.gpus}")
    # one card: card 0's warm worker when `python -m harness serve` keeps one (and no --device says otherwise)
    warm_card0 = args.gpus in (None, 1) and args.device is None and _warm_worker_on_card0()
    if (args.gpus or 1) > 1 or warm_card0:
        args.gpus = args.gpus or 1
        out_dir = _run_spread(args, methods, resolutions)
    else:
        suite, device, run_e2e = _checked_run(args, methods, resolutions)
        from harness.core.runner import run_suite

        out_dir = _interruptible(lambda: run_suite(suite, args.out, device=device, progress=not args.no_progress,
                                                   e2e=run_e2e))
    if out_dir is None:
        return 130
    from harness.core.results import load_results
    from harness.core.runner import exit_status, print_summary

    results = load_results(out_dir)
    print_summary(results, out_dir)
    code = exit_status(results)
    if args.report:
        code = max(code, _build_report(out_dir))
    return code


def _warm_worker_on_card0() -> bool:
    """Whether a warm worker answers on card 0 (`python -m harness serve`; a busy one counts: the run is then
    refused rather than timed beside another)."""
    from harness.core.spread.pool import card_label
    from harness.core.spread.warm import ping

    return ping(card_label(0)).reply is not None


def _run_spread(args: argparse.Namespace, methods, resolutions):
    """``run --gpus N`` (issue #17): the workers start and get their work before this process imports torch,
    which it then does to check the input while they run (a refusal stops them: `run_spread`)."""
    from harness.core.spread.pool import Selection, start_workers

    selection = Selection(args.suite, methods, resolutions, args.quick, e2e_runner="harness.apps.e2e:run_e2e_cases")
    pool = start_workers(selection, args.gpus, args.out)
    try:
        pool.hand_out(selection, args.out, "cuda:0")
    except BaseException:
        pool.close()
        raise

    def check():
        from harness.core.spread.run import check_cards

        suite = _checked_run(args, methods, resolutions, in_process=False)[0]
        check_cards(range(args.gpus), "cuda")
        return suite

    from harness.core.spread.run import run_spread

    return _interruptible(lambda: run_spread(selection, args.gpus, args.out, pool=pool, check=check))


def _interruptible(run: Callable[[], object]):
    """``run()``'s results directory, or None after Ctrl-C (said on stderr)."""
    try:
        return run()
    except KeyboardInterrupt:
        print("\ninterrupted: the results file holds the cases finished so far (complete: false)", file=sys.stderr)
        return None


def _checked_run(args: argparse.Namespace, methods, resolutions, in_process: bool = True):
    """The suite selection, the device and the [e2e] runner of ``run`` (``in_process``: this process runs it),
    with its input checked (BadInput)."""
    from harness.core.memory import absurd_problems
    from harness.core.runner import optional

    # the [e2e] table is harness.apps.e2e's: its check at load time, its runner in the run (imported only for
    # a one-GPU run of a suite that has the table: it imports diffusers, 2-5 s; a spread worker imports its own)
    settings, _ = optional("harness.apps.e2e", "E2ESettings")
    device = _device(args.device)
    suite = _load_suite(args.suite, sections={"e2e": settings.from_section} if settings else None)
    suite = suite.select(methods=methods, resolutions=resolutions, quick=args.quick)
    absurd = absurd_problems(suite.problems(), device)
    if absurd:
        raise BadInput(absurd)
    run_e2e = optional("harness.apps.e2e", "run_e2e_cases")[0] if "e2e" in suite.metrics and in_process else None
    return suite, device, run_e2e


def _cmd_serve(args: argparse.Namespace) -> int:
    from harness.core.spread.serve import host_cards, serve_command

    count = args.gpus if args.gpus is not None else host_cards()
    if count < 1:
        raise BadInput("serve: no GPU on this host (pass --gpus N to name the cards)" if args.gpus is None
                       else f"--gpus must be at least 1, got {args.gpus}")
    action = "status" if args.status else "stop" if args.stop else "start"
    return serve_command(list(range(count)), action, idle_s=args.idle_minutes * 60)


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.core.results import load_results

    for directory in filter(None, (args.results_dir, args.compare)):
        try:
            results = load_results(directory)  # a clear error for a missing directory or another schema
        except UnicodeDecodeError as exc:
            raise BadInput(f"{directory}: results.json is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise BadInput(f"cannot read the results in {directory}: {exc.strerror or exc}") from None
        if results.get("complete") is False:
            print(f"warning: {directory} is an INCOMPLETE run (complete: false): it stopped before its end, "
                  f"{len(results['cases'])} cases recorded", file=sys.stderr)
    verdict = _gate_verdict(args.results_dir, args.compare) if args.compare else None
    return _build_report(args.results_dir, args.compare, verdict)


def _gate_verdict(results_dir, compare_dir) -> dict:
    """The gate's own verdict on the pair, with the thresholds `gate` would use, for the report to show as is."""
    from pathlib import Path

    from harness.apps.gate import inputs
    from harness.apps.gate.compare import compare
    from harness.core.results import load_results

    reference, candidate = load_results(compare_dir), load_results(results_dir)
    stored = Path(compare_dir).resolve().is_relative_to(inputs.REFERENCES_DIR.resolve())
    try:
        threshold_pct, per_case, _ = inputs.trusted_thresholds(reference.get("suite"), reference if stored else None)
        mode, _ = inputs.trusted_mode(reference.get("suite"), reference if stored else None)
        verdict = compare(reference, candidate, threshold_pct=threshold_pct, per_case=per_case, mode=mode)
    except ValueError as exc:
        raise BadInput(f"the gate cannot compare {results_dir} with {compare_dir}: {exc}") from None
    verdict["reference"]["source"], verdict["candidate"]["source"] = str(compare_dir), str(results_dir)
    return verdict


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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. A delegated command's module is imported only when it is ``command`` (all of them
    when that is None, so the help says which can run): importing them imports torch, which ``run --gpus N``
    must not wait for before it starts its workers."""
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
    p.add_argument("--gpus", type=int, metavar="N",
                   help="spread the problem groups (split by layer where that balances better) over N GPUs of this "
                        "host: one worker per GPU (the card's warm worker while `serve` runs), one results.json "
                        "(default: this process, or card 0's warm worker while `serve` runs)")
    p.add_argument("--report", action="store_true", help="write the HTML report at the end and print its path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", help="keep a warm worker on each GPU: later runs skip the start-up (10-15 s a process)")
    p.add_argument("--gpus", type=int, metavar="N", help="cards 0..N-1 (default: every card this host shows)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="say which cards have a warm worker and its state")
    action.add_argument("--stop", action="store_true", help="stop the warm workers")
    p.add_argument("--idle-minutes", type=float, default=60.0, help="a warm worker exits after this long without a run")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("report", help="turn a results directory into a self-contained HTML report")
    p.add_argument("results_dir")
    p.add_argument("--compare", metavar="DIR", help="a second results directory to compare against")
    p.set_defaults(func=_cmd_report)

    for name, (module_name, help_text) in DELEGATES.items():
        if command in (None, name):
            _delegate(sub, name, module_name, help_text)
        else:  # listed, not loaded: this invocation is another command
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in REQUIRED_MODULES:
            raise
        return _fail(f"{exc.name} is not installed in {sys.executable}; {INSTALL_HINT}")


def _main(argv: list[str] | None) -> int:
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "takes_any_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except ValueError as exc:  # BadInput, SuiteError, ResultsError, RunDirError, PathComponentError, ...
        return _fail(str(exc))
