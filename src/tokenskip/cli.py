"""``tokenskip`` command line: one subcommand per pipeline stage (from :mod:`tokenskip.stages`), ``run``, and
the commands that are not stages (``serve``, ``lab-targets``, ``gamma-check``, ``fit-length``).

A stage's command is derived from its config class: one flag per field
(:func:`tokenskip.contract.config.add_dataclass_args`), the config built from the flags typed, the stage's
function run on it, and the module's ``show(cfg, result)`` printing what it reports. The other commands'
modules expose ``add_arguments(parser)`` and ``run_cli(args) -> int``. Only the chosen command's module is
imported, so ``tokenskip --help`` is fast and a missing optional extra (vLLM) breaks no other command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tokenskip.contract.config import add_dataclass_args, dataclass_from_args
from tokenskip.errors import TokenskipError
from tokenskip.stages import STAGES, Stage

#: subcommand -> (module, one-line help). Order = the pipeline's order; ``run`` runs them all; then the
#: commands that are not pipeline stages.
COMMANDS: dict[str, tuple[str, str]] = {s.command: (s.module, s.help) for s in STAGES if s.name != "report"}
COMMANDS["run"] = ("tokenskip.pipeline.run", "run a whole recipe (YAML), resumably")
COMMANDS.update({s.command: (s.module, s.help) for s in STAGES if s.name == "report"})
COMMANDS.update({
    "gamma-check": ("tokenskip.lab.gamma_check", "does an adapter prefer the γ-compressed CoT when asked for γ? "
                                                 "(losses)"),
    "fit-length": ("tokenskip.generation.length_model", "fit the CoT length model of budget mode on original CoTs"),
    "lab-targets": ("tokenskip.lab.targets",
                    "check a CPU-lab run's report against the lab's targets (PASS/FAIL lines)"),
    "serve": ("tokenskip.serving.app", "OpenAI-compatible HTTP server for a model/adapter (γ or a token budget per "
                                       "request)"),
})

#: what a user can fix: printed as one line, exit status 2 (anything else keeps its traceback)
EXPECTED_ERRORS = (TokenskipError, ValueError, OSError, ImportError)


def build_parser(cmd: str, module=None) -> argparse.ArgumentParser:
    """The argument parser of ``tokenskip CMD`` (common flags + the stage's own); imports the stage module
    when ``module`` is not given."""
    module = module or importlib.import_module(COMMANDS[cmd][0])
    parser = argparse.ArgumentParser(prog=f"tokenskip {cmd}", description=COMMANDS[cmd][1])
    parser.add_argument("--log-level", default=os.environ.get("TOKENSKIP_LOG_LEVEL", "INFO"),
                        help="logging level (default: INFO)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="for scripts: print only errors (no progress bars, training lines, INFO logs or "
                             "summary); also TOKENSKIP_QUIET=1")
    stage = STAGE_COMMANDS.get(cmd)
    if stage is not None:
        add_dataclass_args(parser, stage.config_cls)
    else:
        module.add_arguments(parser)
    return parser


#: command -> the stage it runs
STAGE_COMMANDS: dict[str, Stage] = {s.command: s for s in STAGES}


def run_stage(stage: Stage, args: argparse.Namespace) -> int:
    """``tokenskip <stage command>``: build the stage's config from the flags, run it, show its result."""
    cfg = dataclass_from_args(stage.config_cls, args)
    result = stage.run_one(cfg)
    show = getattr(stage.load(), "show", None)
    if show is not None:
        show(cfg, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="tokenskip", description="Controllable chain-of-thought compression (TokenSkip).",
        epilog="Run 'tokenskip COMMAND --help' for a command's options.")
    top.add_argument("--version", action="store_true", help="print the version and exit")
    top.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND",
                     help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    if argv and argv[0] == "--version":
        from tokenskip import __version__
        print(__version__)
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        top.error(f"unknown command {cmd!r}; choose from {', '.join(COMMANDS)}")
    from tokenskip.contract import console

    if "--quiet" in argv[1:] or "-q" in argv[1:]:
        console.set_quiet(True)  # before the stage imports Hugging Face libraries, which read it at import
    try:
        module = importlib.import_module(COMMANDS[cmd][0])
        parser = build_parser(cmd, module)
        args = parser.parse_args(argv[1:])
        console.set_quiet(args.quiet or console.quiet())
        level = "WARNING" if console.quiet() and args.log_level.upper() in ("INFO", "DEBUG") else args.log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        if cmd in STAGE_COMMANDS:
            return run_stage(STAGE_COMMANDS[cmd], args)
        return int(module.run_cli(args) or 0)
    except EXPECTED_ERRORS as e:
        # Bad input (settings, data, a model that cannot be found offline), a missing optional package,
        # a grading worker that cannot start: one clear line, no traceback.
        msg = str(e).strip().splitlines()
        print(f"tokenskip {cmd}: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        if len(msg) > 1:
            print("\n".join("  " + m for m in msg[1:6]), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
