"""`dataset-checks`: `pytest dataset_checks` started so that nothing in the dataset configures it.

pytest looks for its configuration (pytest.ini, tox.ini, setup.cfg, pyproject.toml, conftest.py)
before any plugin is loaded, in the folders of the paths on its command line: `pytest
dataset_checks --dataset /data/faces` takes /data/faces for a test path there (the option is
not known yet), and run from inside the dataset pytest walks up from the cwd. A dataset holding a
pytest.ini with `addopts = -p evil_plugin` and `pythonpath = .` then has its module imported
before the plugin can refuse anything. This command starts pytest in-process with the
configuration pinned instead:

* `--config-file` = the package's own `pytest_pinned.ini` (empty): no configuration file is
  looked for anywhere;
* `--rootdir` = the cwd (from inside the dataset: `~/.cache/dataset_checks/rootdir`, and then
  `--report-dir` is required);
* `--noconftest`: no conftest.py is imported (the package has none);
* the dataset as one `--dataset=DIR` token, and the dataset_checks package as the test path.

Every other argument goes to pytest unchanged. Refused with a one-line usage error (status 4):
a test path outside the dataset_checks package, and `-c`, `--rootdir`, `--confcutdir`,
`--debug`, `--log-file` or a `-p` plugin inside the dataset (or an `--against` dataset).
PYTEST_ADDOPTS and PYTEST_PLUGINS are the user's own environment: they apply, under the same
checks.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .discover import display_name
from .outputs import is_inside, user_cache_dir

if TYPE_CHECKING:  # pytest is imported only once a run needs it (the CLI starts without it)
    import argparse

    import pytest

PACKAGE_DIR = Path(__file__).resolve().parent
PINNED_INI = PACKAGE_DIR / "pytest_pinned.ini"
PROG = "dataset-checks"
USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR
# options of ours that take a path: written as one --opt=PATH token, so that no pytest start-up
# code ever takes the path for a test path
_PATH_OPTIONS = ("--dataset", "--against", "--rules", "--report-dir", "--baseline")
# pytest options whose path must not lie in the dataset (argparse dest, as the user writes it)
_CHECKED = (("inifilename", "-c/--config-file"), ("rootdir", "--rootdir"), ("confcutdir", "--confcutdir"),
            ("debug", "--debug"), ("log_file", "--log-file"))

HELP = f"""\
{PROG}: check a face-recognition dataset (one folder per identity) with the dataset_checks
pytest suite; nothing in the dataset but its data is read.

  {PROG}                                           the built-in demo (or rules.yaml's dataset)
  {PROG} --dataset /data/faces --report-dir reports/
  {PROG} --dataset /data/faces --baseline dataset-baseline.csv [--update-baseline]

It runs `pytest dataset_checks` with pytest's configuration pinned: --config-file {PINNED_INI.name}
(shipped in the package: no pytest.ini, tox.ini, setup.cfg or pyproject.toml is looked for),
--rootdir = the current folder (rules.yaml, reports/ and .dataset_checks_cache/ go there),
--noconftest, and the dataset as one --dataset=DIR token. Every other option goes to pytest
(all are listed below). Refused: a test path other than the dataset_checks package, and -c,
--rootdir, --confcutdir, --debug, --log-file or -p pointing inside the dataset. PYTEST_ADDOPTS and
PYTEST_PLUGINS from the environment apply (they are yours, not the dataset's). Run from inside
the dataset, --report-dir outside it is required (the rootdir is then {user_cache_dir() / 'rootdir'}).
Exit status: pytest's (0 all passed, 1 a test failed, 4 a usage error).
"""


class Refused(Exception):
    """A command line that could let the dataset configure or change its own check."""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        pytest_args, protected = build_args(args)
    except Refused as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    # `python -m dataset_checks.cli` run from inside the dataset has the cwd on sys.path
    sys.path[:] = [p for p in sys.path if not any(is_inside(Path(p or "."), root) for root in protected)]
    try:
        if "-h" in args or "--help" in args:
            print(HELP)
        code = int(_pytest_main(pytest_args, _Guard(protected)))
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `dataset-checks --help | head`, as pytest's own command does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_args(args: list[str], environ: Mapping[str, str] = os.environ) -> tuple[list[str], list[Path]]:
    """The pytest command line for `args`, and the dataset roots that nothing may come from.

    Decided before pytest starts: what pytest reads before any plugin is loaded (its config file,
    rootdir and -p plugins). The test paths are checked by `_Guard` once every option is known."""
    user = _one_token_paths(args)
    seen = _one_token_paths(shlex.split(environ.get("PYTEST_ADDOPTS", ""))) + user  # as pytest parses them
    early = _early_options(seen)
    protected = _protected(seen)
    for dest, flag in _CHECKED:
        value = getattr(early, dest, None)
        if isinstance(value, str) and value:
            _outside(Path(value), protected, flag)
    for name in _plugin_names(seen) + [n.strip() for n in environ.get("PYTEST_PLUGINS", "").split(",")]:
        if name and not name.startswith("no:"):
            for where in _module_locations(name):
                _outside(where, protected, f"-p {name}: its module")
    pins = []
    if not early.inifilename:
        pins.append(f"--config-file={PINNED_INI}")
    if not early.rootdir:
        pins.append(f"--rootdir={_rootdir(seen, protected)}")
    pins.append("--noconftest")
    autoload = not (environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or "--disable-plugin-autoload" in seen)
    if not autoload and not any(n in ("dataset_checks", "dataset_checks.plugin") for n in _plugin_names(seen)):
        pins += ["-p", "dataset_checks.plugin"]
    return [*pins, *user], protected


class _Guard:
    """Checks the test paths (and the output paths) once every plugin's options are known, before
    pytest opens a --debug file, reads a conftest or collects anything; with none given, the
    dataset_checks package is the test path."""

    def __init__(self, protected: list[Path]):
        self.protected = protected

    @staticmethod
    def _refuse(exc: Refused) -> pytest.UsageError:
        import pytest

        return pytest.UsageError(f"{PROG}: {exc}")

    def pytest_load_initial_conftests(self, early_config: pytest.Config, args: list[str]) -> None:
        ns = early_config.known_args_namespace
        protected = [*self.protected, *([ns.dataset] if getattr(ns, "dataset", None) else []),
                     *(getattr(ns, "against", None) or [])]
        try:
            for dest, flag in _CHECKED:
                value = getattr(ns, dest, None)
                if isinstance(value, str) and value:
                    _outside(Path(value), protected, flag)
            for k, arg in enumerate(ns.file_or_dir or []):
                name = arg.split("::")[0]
                if name.startswith("dataset_checks/") and not Path(name).exists():
                    # dataset_checks/test_identities.py::test_dataset: the installed package's file
                    mapped = str(PACKAGE_DIR) + arg[len("dataset_checks"):]
                    args[:] = [mapped if a == arg else a for a in args]
                    ns.file_or_dir[k] = arg = mapped
                if not _targets_package(arg):
                    raise Refused(f"{display_name(arg)}: {PROG} runs the dataset_checks tests only (select among "
                                  "them with -k EXPR); a dataset is given as --dataset DIR")
        except Refused as exc:
            raise self._refuse(exc) from None
        if not ns.file_or_dir:
            args.append(str(PACKAGE_DIR))
            ns.file_or_dir = [str(PACKAGE_DIR)]


def _one_token_paths(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        if arg in _PATH_OPTIONS and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _early_options(tokens: list[str]) -> argparse.Namespace:
    """The options pytest reads before it loads any plugin (-c, --rootdir, ...), parsed as it does
    then: by its built-in options alone (importing nothing that pytest itself does not)."""
    from _pytest.config import get_config
    from _pytest.config.exceptions import UsageError

    try:
        ns, _unknown = get_config(tokens)._parser.parse_known_and_unknown_args(tokens)
    except UsageError as exc:
        raise Refused(str(exc).strip().splitlines()[-1]) from None
    return ns


def _option_values(tokens: list[str], option: str) -> list[str]:
    """Every value of `--option=VALUE` (written so by `_one_token_paths`)."""
    values = []
    for token in tokens:
        if token == "--":
            break
        if token.startswith(option + "="):
            values.append(token[len(option) + 1:])
    return values


def _protected(tokens: list[str]) -> list[Path]:
    """The dataset and the --against datasets, as far as the command line names them."""
    found = _option_values(tokens, "--dataset")[-1:] + _option_values(tokens, "--against")
    roots = [Path(p).expanduser().resolve() for p in found if Path(p).expanduser().is_dir()]
    rules_files = _option_values(tokens, "--rules")[-1:]
    if not found and rules_files:  # a dataset named by --rules FILE only
        from .rules import RulesError, load_rules

        try:
            rules = load_rules(rules_files[0])
        except (RulesError, OSError):
            return []  # the plugin says what is wrong with the file
        roots = [Path(r) for r in (rules.dataset, *rules.against) if r is not None]
    return roots


def _outside(path: Path, protected: list[Path], flag: str) -> None:
    for root in protected:
        if is_inside(path, root):
            raise Refused(f"{flag} {display_name(str(path))} is inside the dataset {display_name(str(root))}: "
                          "a dataset never configures its own check and is never written")


def _plugin_names(tokens: list[str]) -> list[str]:
    """The -p arguments, found as pytest finds them (PytestPluginManager.consider_preparse)."""
    names = []
    i = 0
    while i < len(tokens):
        arg = tokens[i]
        i += 1
        if arg == "-p" and i < len(tokens):
            names.append(tokens[i].strip())
            i += 1
        elif arg.startswith("-p") and arg != "-p":
            names.append(arg[2:].strip())
    return names


def _module_locations(name: str) -> list[Path]:
    """Where importing `name` would load its top-level module from (found without importing)."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    places = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin and spec.has_location:
        places.append(Path(spec.origin))
    return places


def _targets_package(arg: str) -> bool:
    name = arg.split("::")[0]
    if name in ("dataset_checks", "dataset_checks/") and not Path(name).exists():
        return True  # the plugin takes the bare name for the installed package
    path = Path(name).resolve()
    return path == PACKAGE_DIR or PACKAGE_DIR in path.parents


def _rootdir(tokens: list[str], protected: list[Path]) -> Path:
    cwd = Path.cwd()
    inside = [root for root in protected if is_inside(cwd, root)]
    if not inside:
        return cwd
    if not _option_values(tokens, "--report-dir"):
        raise Refused(f"the current folder is inside the dataset {display_name(str(inside[0]))}, which is never "
                      "written: give --report-dir outside it, or run from another folder")
    folder = user_cache_dir() / "rootdir"
    for root in protected:
        if is_inside(folder, root):
            raise Refused(f"the user cache {display_name(str(folder))} is inside the dataset "
                          f"{display_name(str(root))}: give --rootdir outside it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _pytest_main(args: list[str], guard: _Guard) -> int:
    import pytest

    try:  # pytest 9: the program name in usage lines ("pytest.main()" otherwise)
        from _pytest.config import _main

        if "prog" in inspect.signature(_main).parameters:
            return _main(args=args, plugins=[guard], prog=PROG)
    except ImportError:
        pass
    return pytest.main(args, plugins=[guard])


if __name__ == "__main__":
    sys.exit(main())
