"""Entry points: ``nox`` runs the CPU tests; every other session is a thin call into ``python -m harness``.

    nox                                    # tests (CPU; Triton through its interpreter)
    nox -s smoke                           # the whole pipeline on CPU, then the HTML report
    nox -s bench-2048 -- --methods hilberta,sdpa_cudnn --out results/mine
    nox -s bench-ci && nox -s gate -- --candidate results/<run> --reference auto
    nox -s report -- results/<run> [--compare results/<other>]   # default: the newest run

Every session works in its own virtualenv (created with ``--system-site-packages``, so a CUDA build of
torch already on the machine is used, never replaced) and with ``python -m nox --no-venv`` (the python
running nox, with whatever it has; nothing is installed and the project runs from this source tree through
PYTHONPATH). GPU machines without a package index use ``--no-venv``. Arguments after ``--`` go to the
harness command.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2024.04.15"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).resolve().parent
CPU_TORCH = "torch==2.13.0"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
NOX_REQUIREMENT = f"nox{nox.needs_version}"
VENV_PARAMS = ["--system-site-packages"]
# GPU suites: session name = suite name; each ends with the HTML report.
BENCH_SUITES = {
    "bench-1024": "all methods at 1024x1024 and 1536x1024: timing, power, traffic",
    "bench-2048": "all methods at 2048x2048 (~5 min on an H100): timing, power, traffic",
    "bench-4096": "4096x4096 (cases that do not fit are skipped, with the reason)",
    "bench-ci": "the suite CI gates merges on (a few minutes on an H100)",
    "density-sweep": "speed against density for every sparse method at 2048x2048",
    "e2e-flux": "end-to-end Flux.1-dev transformer steps with each attention method",
    "kernel-bench": "HilbertA's kernel per sliding phase vs FA2, cuDNN and Flex (same mask), and its anatomy",
}
EXTRAS = {"e2e-flux": "e2e"}


def _no_venv(session: nox.Session) -> bool:
    return session.venv_backend == "none"


def _python(session: nox.Session) -> str:
    """The session's ``python``; without a virtualenv, the interpreter running nox (``python`` on PATH may be
    another one, without torch)."""
    return sys.executable if _no_venv(session) else "python"


def _python_prints(session: nox.Session, code: str) -> str:
    """The last line that ``python -c code`` prints in the session's environment ('' when it fails)."""
    out = session.run(_python(session), "-c", code, silent=True, log=False, success_codes=[0, 1])
    lines = (out or "").strip().splitlines()
    return lines[-1] if lines else ""


def _torch_importable(session: nox.Session) -> bool:
    return _python_prints(session, "import importlib.util as u; print(u.find_spec('torch') is not None)") == "True"


def _cuda_present(session: nox.Session) -> bool:
    return _python_prints(session, "import torch; print(torch.cuda.is_available())") == "True"


def _setup(session: nox.Session, extras: str | None = None, cpu_torch: bool = False) -> None:
    """Make the project importable: an editable install in a virtualenv, PYTHONPATH without one."""
    if _no_venv(session):  # the machine's environment: install nothing, above all not torch or triton
        session.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return
    if cpu_torch and not _torch_importable(session):
        session.install(CPU_TORCH, "--extra-index-url", CPU_TORCH_INDEX)
    session.install("-e", f".[{extras}]" if extras else ".")


def _harness(session: nox.Session, *args: str, env: dict | None = None) -> None:
    session.run(_python(session), "-m", "harness", *args, env=env)


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """The import contracts (`lint-imports`: the layers of docs/architecture.md), then the unit tests; Triton
    kernels run in its interpreter unless CUDA is present."""
    _setup(session, extras="test", cpu_torch=True)  # the test extra brings import-linter
    if not _no_venv(session):
        session.install(NOX_REQUIREMENT)  # tests/test_cli.py loads this noxfile: without nox they would skip
    if _no_venv(session) and shutil.which("lint-imports") is None:
        session.warn("lint-imports is not installed here: the import contracts are not checked (pip install import-linter)")
    else:
        session.run("lint-imports", "--no-cache", external=_no_venv(session))
    env = {} if _cuda_present(session) else {"TRITON_INTERPRET": "1"}
    session.run(_python(session), "-m", "pytest", *session.posargs, env=env)


@nox.session(venv_params=VENV_PARAMS, default=False)
def smoke(session: nox.Session) -> None:
    """The whole pipeline on CPU in about a minute (suite `smoke`), then the HTML report."""
    _setup(session, extras="test", cpu_torch=True)  # the test extra pins what Triton's interpreter needs
    _harness(session, "run", "smoke", "--device", "cpu", "--report", *session.posargs, env={"TRITON_INTERPRET": "1"})


def _bench_session(suite: str, description: str) -> None:
    def bench(session: nox.Session) -> None:
        _setup(session, extras=EXTRAS.get(suite))
        _harness(session, "run", suite, "--report", *session.posargs)

    bench.__doc__ = f"GPU: {description}; ends with the HTML report."
    nox.session(name=suite, venv_params=VENV_PARAMS, default=False)(bench)


for _suite, _description in BENCH_SUITES.items():
    _bench_session(_suite, _description)


@nox.session(venv_params=VENV_PARAMS, default=False)
def gate(session: nox.Session) -> None:
    """Gate a candidate run against a reference (`-- --candidate DIR --reference auto|DIR`)."""
    _setup(session)
    _harness(session, "gate", *session.posargs)


@nox.session(venv_params=VENV_PARAMS, default=False)
def tune(session: nox.Session) -> None:
    """GPU: search kernel launch configs and store the best in kernels/configs/<arch>.json."""
    _setup(session)
    _harness(session, "tune", *session.posargs)


def _newest_run() -> str | None:
    runs = sorted((ROOT / "results").glob("*/results.json"), key=lambda path: path.stat().st_mtime)
    return str(runs[-1].parent) if runs else None


@nox.session(venv_params=VENV_PARAMS, default=False)
def report(session: nox.Session) -> None:
    """HTML report of a results directory (default: the newest under results/)."""
    _setup(session)
    args = list(session.posargs) or [_newest_run() or session.error("no results/ run yet: give a directory")]
    _harness(session, "report", *args)
