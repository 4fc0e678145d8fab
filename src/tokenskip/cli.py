"""``tokenskip`` command line: one subcommand per pipeline stage.

Each stage module exposes ``add_arguments(parser)`` and ``run_cli(args) -> int``; only the chosen
stage's module is imported, so ``tokenskip --help`` is fast and an optional extra (vLLM) missing
does not break other commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

#: subcommand -> (module, one-line help). Order = the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "lab-data": ("tokenskip.lab_data", "write the CPU lab's seeded train/validation/test problems (reasoning-gym)"),
    "warmup": ("tokenskip.warmup", "fine-tune the base model on the lab's worked solutions (LoRA)"),
    "merge": ("tokenskip.merge", "merge a LoRA adapter into its base model (full model folder)"),
    "generate": ("tokenskip.generate", "write CoTs of the target model for a split (e.g. GSM8K train)"),
    "evaluate": ("tokenskip.evaluate", "evaluate a method (original/prompt/truncation/tokenskip/budget) on a test split"),
    "compress": ("tokenskip.compress.cli", "score token importance and prune CoTs to ratios γ"),
    "build-sft": ("tokenskip.sft", "build the γ-mixed SFT data (prompt/completion records)"),
    "train": ("tokenskip.train", "LoRA fine-tune the target model on the SFT data"),
    "run": ("tokenskip.pipeline", "run a whole recipe (YAML), resumably"),
    "gamma-check": ("tokenskip.gamma_check", "does an adapter prefer the γ-compressed CoT when asked for γ? (losses)"),
    "report": ("tokenskip.report", "write report.md/report.json and plots for a run folder"),
    "fit-length": ("tokenskip.budget", "fit the CoT length model of budget mode on original CoTs"),
    "serve": ("tokenskip.serve", "OpenAI-compatible HTTP server for a model/adapter (γ or a token budget per request)"),
}


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
    module.add_arguments(parser)
    return parser


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
    from tokenskip import console

    if "--quiet" in argv[1:] or "-q" in argv[1:]:
        console.set_quiet(True)  # before the stage imports Hugging Face libraries, which read it at import
    module = importlib.import_module(COMMANDS[cmd][0])
    parser = build_parser(cmd, module)
    args = parser.parse_args(argv[1:])
    console.set_quiet(args.quiet or console.quiet())
    level = "WARNING" if console.quiet() and args.log_level.upper() in ("INFO", "DEBUG") else args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(module.run_cli(args) or 0)
    except (ValueError, OSError) as e:
        # Bad input (settings, data, a model that cannot be found offline): one clear line, no traceback.
        msg = str(e).strip().splitlines()
        print(f"tokenskip {cmd}: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        if len(msg) > 1:
            print("\n".join("  " + m for m in msg[1:6]), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
