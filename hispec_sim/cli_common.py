"""Command-line plumbing shared by `hispec-sim` and `hispec-exec` (no torch here).

Every bad input ends the same way in both programs: ONE stderr line
`<prog>: error: <field>: <what is allowed>`, exit status 2, no traceback, nothing
written. SIGINT ends with one line and exit status 130, SIGTERM / SIGHUP likewise with
128 + the signal (hispec_sim.entry). The limits themselves live in
`hispec_sim.schema` (MAX_BATCH, MAX_PROPOSE, ...); this module only applies them.

Adding a subcommand: write `cmd_x(args) -> int`, register it in the program's
`build_parser()` with `sub.add_parser("x", ...)` and `p.set_defaults(func=cmd_x)`;
raise ValueError("field: message") for bad input and use `check_output` for every file
it writes (before the long work). `run_main` does the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import sys
from pathlib import Path

from . import schema
from .entry import exit_message, terminate_as_interrupt
from .schema import shown, strict_float, strict_int


class UsageError(Exception):
    """Bad command line (argparse's own errors included)."""


class _StoreOnce(argparse._StoreAction):
    """argparse's `store`, but a flag given twice with two values is refused (argparse keeps
    the last without a word; the project refuses a repeated JSON key the same way)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = parser.__dict__.setdefault("_given_values", {})
        if self.dest in given and given[self.dest] != values:
            raise argparse.ArgumentError(self, f"given twice ({given[self.dest]!r}, then {values!r}); give it once")
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are ValueErrors' siblings: one line, exit status 2 (via run_main).
    Flags are spelled out (no abbreviations: a flag that does not apply is refused by its
    name, `refuse_unread`) and a value flag is given once (_StoreOnce)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        self._given_values = {}
        return super().parse_known_args(args, namespace)

    def error(self, message):
        import re

        # "argument --slo-ms: must be ..." -> "slo_ms: must be ... (--slo-ms)": the field as
        # the schema and the JSON outputs spell it first, like every other error
        m = re.match(r"argument (--[\w-]+)(?:/-\w)?: (.*)", message, re.S)
        if m:
            hint = f"; a value that starts with '-' goes as {m.group(1)}=VALUE" if m.group(2) == "expected one argument" else ""
            message = f"{m.group(1)[2:].replace('-', '_')}: {m.group(2)}{hint} ({m.group(1)})"
        raise UsageError(message)


# --------------------------------------------------------------------------- typed values


def _type(name: str, convert, lo, hi, what: str):
    """An argparse `type=` that names the allowed range in its error."""

    def parse(text: str):
        try:
            v = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo}, {hi}], got {text!r}") from None
        if not (lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {text!r}")
        return v

    parse.__name__ = name
    return parse


def _finite_float(text: str) -> float:
    v = strict_float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return v


def name_text(text: str) -> str:
    """argparse type of a name given on the command line: in Unicode NFC, the form names are
    stored in (a terminal may hand over decomposed accents, or marks in typing order)."""
    import unicodedata

    nfc = unicodedata.normalize("NFC", text)
    limit = schema.MAX_NAME
    if len(nfc) > limit >= len(text):  # a few letters (Devanagari nukta forms...) decompose in NFC
        raise argparse.ArgumentTypeError(f"at most {limit} characters in Unicode NFC (the form names are stored in); "
                                         f"{len(text)} as given are {len(nfc)} in NFC")
    return nfc


def int_in(lo: int, hi: int):
    """argparse type: an integer in [lo, hi]."""
    return _type("int", strict_int, lo, hi, "an integer")


def float_in(lo: float, hi: float):
    """argparse type: a finite number in [lo, hi]."""
    return _type("float", _finite_float, lo, hi, "a finite number")


SEED = int_in(0, schema.MAX_SEED)


def int_list(text: str | None, field: str, lo: int = 1, hi: int | None = None) -> list[int]:
    """'1,2, 4' -> [1, 2, 4]; ValueError naming the field and the allowed range otherwise."""
    hi = schema.MAX_LIST_VALUE if hi is None else hi
    try:
        out = [strict_int(x) for x in str(text).replace(" ", "").split(",")]  # '2,,16' and '2,16,' name no value: refused
    except ValueError:
        raise ValueError(f"{field}: expected comma-separated integers in [{lo}, {hi}], got {text!r}") from None
    if len(out) > schema.MAX_LIST_LEN:
        raise ValueError(f"{field}: at most {schema.MAX_LIST_LEN} values, got {len(out)}")
    bad = [x for x in out if not lo <= x <= hi]
    if bad:
        raise ValueError(f"{field}: values must be in [{lo}, {hi}], got {bad[0]}")
    return out


def given(argv: list[str], flag: str) -> bool:
    """Whether `flag` was on the command line, as `--flag V` or `--flag=V`."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def refuse_unread(args, flags, applies_to: str) -> None:
    """A flag the chosen mode does not read is refused, not ignored: ValueError
    '<field>: applies to <applies_to>' for the first of `flags` on the command line."""
    for flag in flags:
        if given(getattr(args, "_argv", []), flag):
            raise ValueError(f"{flag[2:].replace('-', '_')}: applies to {applies_to}")


# --------------------------------------------------------------------------- plans

PLAN_DEFAULTS = {"propose": 2}  # the paper's N_d = 2; --window has no default (3+ levels must give it)


def add_plan_args(p: argparse.ArgumentParser, plan_file_help: str = "plan JSON file") -> None:
    """--plan FILE | --levels L1,..,L --propose G --window W[,W2..], the same in both programs."""
    p.add_argument("--plan", help=plan_file_help + " (the JSON optimize/evaluate prints works too)")
    p.add_argument("--levels", help="exit layers, e.g. 10,20,80 (increasing; the last is the full model)")
    p.add_argument("--propose", type=int_in(1, schema.MAX_PROPOSE), default=None,
                   help=f"drafts per round at level 1 (default {PLAN_DEFAULTS['propose']}; ignored for one level)")
    p.add_argument("--window", help="window(s) of the intermediate level(s), e.g. 4 or 4,8; "
                                    "one value applies to every intermediate level")


def plan_from_args(args, batch: int | None = None, default_layers: int | None = None) -> schema.Plan:
    """The plan of --plan or --levels/--propose/--window (never both). Without either:
    autoregressive over `default_layers` when given, else ValueError naming `plan`.
    batch (when not None) overrides the plan's batch."""
    update = {} if batch is None else {"batch": batch}
    flags = [f for f in ("levels", "propose", "window") if getattr(args, f, None) is not None]
    if args.plan:
        if flags:
            raise ValueError(f"plan: give --plan or --levels/--propose/--window, not both (got --plan and --{flags[0]})")
        plan = schema.load_plan(args.plan)
        return plan.model_copy(update=update) if update else plan
    if args.levels is None:
        if flags:
            raise ValueError(f"levels: --{flags[0]} needs --levels")
        if default_layers is None:
            raise ValueError("plan: give --plan FILE or --levels L1,...,L")
        return schema.autoregressive_plan(default_layers, **update)
    levels = int_list(args.levels, "levels", 1, schema.MAX_LAYERS)
    if len(levels) > schema.MAX_LEVELS:
        raise ValueError(f"levels: at most {schema.MAX_LEVELS} levels, got {len(levels)}")
    inner = max(len(levels) - 2, 0)
    if args.window is not None:
        if inner == 0:
            raise ValueError(f"window: a {len(levels)}-level chain has no intermediate level; drop --window")
        windows = int_list(args.window, "window", 1, schema.MAX_WINDOW)
        if len(windows) == 1:
            windows = windows * inner
        if len(windows) != inner:
            raise ValueError(f"window: a {len(levels)}-level chain needs "
                             + ("1 window" if inner == 1 else f"1 or {inner} windows") + f", got {len(windows)}")
    elif inner:
        raise ValueError(f"window: a {len(levels)}-level chain needs --window: one value in [1, {schema.MAX_WINDOW}]"
                         + (f" for all {inner} intermediate levels, or {inner} comma-separated" if inner > 1 else ""))
    else:
        windows = []
    propose = args.propose if args.propose is not None else PLAN_DEFAULTS["propose"]
    return schema.Plan(levels=levels, propose=propose if len(levels) > 1 else 1, windows=windows, **update)


# --------------------------------------------------------------------------- executor model


def add_search_bounds(p) -> None:
    """The exhaustive search's bounds (optimize, report, capacity)."""
    p.add_argument("--max-propose", type=int_in(1, schema.MAX_PROPOSE), default=8,
                   help=f"longest draft run searched (default 8, at most {schema.MAX_PROPOSE})")
    p.add_argument("--max-window", type=int_in(1, schema.MAX_WINDOW), default=16,
                   help=f"longest intermediate window searched (default 16, at most {schema.MAX_WINDOW})")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --max-context, --device, --threads: how both programs pick and run the executor's model."""
    p.add_argument("--model", help="checkpoint folder (ours or a Hugging Face Llama folder); default: the shipped model")
    p.add_argument("--max-context", type=int_in(2, schema.MAX_CONTEXT), metavar="N",
                   help="positions each KV cache holds, allocated up front (default: the checkpoint's context; "
                        "a Hugging Face folder's max_position_embeddings capped at 2,048); at most the checkpoint's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int_in(1, schema.MAX_THREADS), default=1,
                   help="CPU threads for torch (default 1: stable timings)")


def model_files(args) -> list[Path]:
    """The files of the model folder a command reads (--model, or the shipped checkpoint):
    inputs that an --out must not overwrite."""
    from hispec_exec.checkpoint import DEFAULT_CHECKPOINT

    folder = Path(args.model) if getattr(args, "model", None) else DEFAULT_CHECKPOINT
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def load_model_from_args(args):
    """The executor's model (torch imported here, not at module level)."""
    import torch

    from hispec_exec.checkpoint import load_model

    torch.set_num_threads(args.threads)
    return load_model(args.model, device=args.device, max_seq_len=args.max_context)


# --------------------------------------------------------------------------- files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False


def _sqlite_database(url: str) -> str | None:
    """The database of a sqlite URL as SQLAlchemy reads it: the query string (?timeout=5)
    is not part of it, and a 'file:' URI (?uri=true) names the file after the prefix."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ValueError(f"storage: cannot parse {url!r} ({e})") from None
    db = u.database
    if db and u.query.get("uri") in ("true", "1") and db.startswith("file:"):
        db = db.removeprefix("file:").split("?", 1)[0]
    return db or None


def sqlite_files(url: str | None) -> list[Path]:
    """The files a sqlite:/// storage writes: its database and SQLite's journals beside it
    ([] for other URLs)."""
    if not url or not url.lower().startswith("sqlite"):
        return []
    db = _sqlite_database(url)
    if not db or db.startswith(":memory:") or db.startswith(":"):
        return []
    return [Path(db + suffix) for suffix in ("", "-journal", "-wal", "-shm")]


def check_storage(url: str) -> None:
    """An Optuna storage URL a study can live in: a sqlite FILE or a server database."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("storage: expected an RDB URL such as sqlite:///hispec-studies.db or "
                         f"postgresql://user:pass@host/db, got {url!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        path = _sqlite_database(url)
        if not path or path.startswith(":memory:") or path.startswith(":"):
            raise ValueError(f"storage: {url!r} names no file; a study needs one, e.g. sqlite:///hispec-studies.db")
        p = Path(path)
        _check_length(p, "storage", len("-journal"), " (SQLite keeps a -journal file beside it)")
        if p.is_dir():
            raise ValueError(f"storage: {path} is a folder; give a database file")
        if not p.parent.exists():
            raise ValueError(f"storage: folder {p.parent} of {url} does not exist")
        if p.exists() and not p.is_file():
            raise ValueError(f"storage: {path} is not a regular file")
        _refuse_foreign_database(p)
    elif scheme not in ("postgresql", "postgres", "mysql"):
        raise ValueError(f"storage: scheme {scheme!r} not supported; use sqlite:///FILE or postgresql://...")


def _refuse_foreign_database(p: Path) -> None:
    """A SQLite file that holds tables but not Optuna's is another program's database: a study
    would add a dozen tables to it."""
    import sqlite3

    if not p.is_file() or p.stat().st_size == 0:
        return
    try:
        # immutable: no locks, so a WAL-mode file (Optuna's) gets no -shm / -wal side files from this look; but
        # immutable reads the main file only, so where a write-ahead log holds pages, read through it
        wal = Path(f"{p}-wal")
        pending = wal.is_file() and wal.stat().st_size > 0
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro" + ("" if pending else "&immutable=1"), uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:  # not a database, locked, ...: Optuna's own message follows
        return
    if tables and not {"studies", "trials"} <= tables:
        shown_tables = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ValueError(f"storage: {p} is a SQLite database of something else (tables {shown_tables}); give a new "
                         "file or an Optuna study storage")


def _writable_folder(folder: Path) -> bool:
    """Whether a file can be created in folder: tried, not guessed (os.access says yes to
    root on read-only mounts and pseudo file systems)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hispec-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _check_length(path: Path, field: str, reserve: int = 0, why: str = "") -> None:
    """A name or path longer than the file system takes (less `reserve` bytes for a suffix
    that files beside it add, `why`), said as such -- not as an OSError of whichever call
    meets it first."""
    folder = path.parent if path.parent.is_dir() else Path(".")
    for what, size, key, default in (("file name", len(os.fsencode(path.name)), "PC_NAME_MAX", 255),
                                     ("path", len(os.fsencode(str(path))), "PC_PATH_MAX", 4096)):  # as opened
        try:
            limit = os.pathconf(folder, key)
        except (OSError, ValueError):
            limit = default
        most = (limit if key == "PC_NAME_MAX" else limit - 1) - reserve  # PATH_MAX counts the terminating NUL
        if size > most:
            raise ValueError(f"{field}: the {what} is {size} bytes; allowed: <= {most} bytes on this file system{why}")


def check_output(path: str | Path, field: str = "out", inputs=(), must_not_exist_as_dir: bool = True) -> Path:
    """Check, before any long work, that a result can be written at path and that it is
    none of the inputs (profile, plan, study database, ...): a run never overwrites what
    it reads. Returns the path."""
    if str(path).endswith(tuple(filter(None, (os.sep, os.altsep)))):  # Path() drops the slash: 'new/' would become a file 'new'
        raise ValueError(f"{field}: {str(path)!r} names a folder; give a file name")
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise ValueError(f"{field}: give a file name, got {str(path)!r}")
    _check_length(path, field)
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/stdout on a pipe, a FIFO, a device
        raise ValueError(f"{field}: {shown(path)} is not a regular file")
    if path.is_symlink():  # the file written is the link's target (schema.write_atomic)
        path = Path(os.path.realpath(path))
        if path.is_symlink():  # realpath stops where links loop
            raise ValueError(f"{field}: {path} is a symbolic link that loops; give a file name")
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise ValueError(f"{field}: {path} is also an input of this command; choose another file")
    if not path.parent.exists():
        raise ValueError(f"{field}: folder {path.parent} does not exist")
    if must_not_exist_as_dir and path.is_dir():
        raise ValueError(f"{field}: {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise ValueError(f"{field}: {path} is not a regular file")
    if not _writable_folder(path.parent) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{field}: {path} is not writable")
    return path


def check_output_folder(path: str | Path, field: str = "out") -> Path:
    """A folder a command will create or fill: its parent exists and is writable, and it is
    not a file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{field}: {path} is a symbolic link to nothing (or a loop); give a folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{field}: {shown(path)} is {'a file' if path.is_file() else 'not a folder'}; give a folder")
    parent = path.parent
    if not parent.exists():
        raise ValueError(f"{field}: folder {parent} does not exist")
    target = path if path.exists() else parent
    if not _writable_folder(target):
        raise ValueError(f"{field}: {target} is not writable")
    return path


def add_progress_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--progress", action="store_true",
                   help=f"log {what} to stderr with the seconds since the start (default: on a terminal only)")


def progress_log(name: str, asked: bool):
    """log(line) printing `[name  N s] line` to stderr, or None: progress goes to a terminal
    or where asked for; otherwise a failing run's stderr stays its one line."""
    if not (asked or sys.stderr.isatty()):
        return None
    import time

    start = time.monotonic()
    return lambda line: print(f"[{name} {time.monotonic() - start:4.0f} s] {line}", file=sys.stderr, flush=True)



# --------------------------------------------------------------------------- errors and main


def one_line(e: BaseException) -> str:
    """The message of a ValueError or pydantic ValidationError on one line, naming the field."""
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()
    if isinstance(e, ValidationError):
        text = schema.validation_message(e)
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= 400 else f"{text[:250]} ... {text[-140:]}"  # the reason is at the end


class _ClosedStream(io.TextIOBase):
    """Python's stand-in for a standard stream closed before the start (None) made print()
    a silent no-op: output lost, exit status 0. Writing to this one fails instead."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "closed before the start")


class _Diagnostics(io.TextIOBase):
    """stderr for the length of a command: notes, warnings and progress lines that cannot be
    written (stderr closed before the start, or full) are dropped -- they must neither turn
    into stdout (Python's print(file=None) writes there, corrupting --json) nor fail a run
    whose result can still be written."""

    def __init__(self, stream):
        self._stream = stream

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._stream.flush()

    def __getattr__(self, name):  # encoding, fileno, ...: the stream's own
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


def _say(line: str) -> None:
    """One line on stderr (_Diagnostics: if it can take it; the exit status stays the
    command's)."""
    print(line, file=sys.stderr, flush=True)


def run_main(prog: str, build_parser, argv: list[str] | None, func_attr: str = "func") -> int:
    """Parse argv and run the chosen command; every failure is one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is None:
        sys.stdout = _ClosedStream()
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape, not an error
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    stderr, sys.stderr = sys.stderr, _Diagnostics(sys.stderr)
    try:
        with terminate_as_interrupt():
            return _run_main(prog, build_parser, argv, func_attr)
    finally:
        sys.stderr = stderr


def _run_main(prog: str, build_parser, argv: list[str], func_attr: str) -> int:
    args = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0)
        args._argv = argv
        for name, value in vars(args).items():  # '' names no file, profile, workload...: never "not given"
            if value == "":
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{name}: must not be empty" + (f" ({flag})" if given(argv, flag) else ""))
        func = getattr(args, func_attr, None) or getattr(args, "fn")  # `fn`: hispec-exec's older spelling
        code = func(args)
        sys.stdout.flush()  # here, not at exit: a full or closed stdout is an error of this command
        return code
    except UsageError as e:
        _say(f"{prog}: error: {one_line(e)}")
    except KeyboardInterrupt as e:  # also SIGTERM / SIGHUP; a command that keeps what it finished says so in args._interrupted
        line, code = exit_message(prog, e, getattr(args, "_interrupted", "nothing written"))
        _say(line)
        return code
    except BrokenPipeError:
        try:  # stdout closed by the reader (| head): not an error
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except MemoryError:
        _say(f"{prog}: error: memory: not enough memory for this input; use smaller sizes")
    except RecursionError:
        _say(f"{prog}: error: input: nested too deeply")
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        _say(f"{prog}: error: {one_line(e)}")
    except OSError as e:  # a file this command reads or writes; a nameless write error: its standard output
        stdout = not getattr(e, "filename", None) and e.errno in (errno.EBADF, errno.ENOSPC, errno.EIO, errno.EDQUOT)
        where = "stdout:" if stdout else "file:" + (f" {e.filename}" if getattr(e, "filename", None) else "")
        _say(f"{prog}: error: {where} {e.strerror or e}")
        if stdout:
            with contextlib.suppress(OSError, ValueError):  # nothing left to flush at exit
                sys.stdout = open(os.devnull, "w")
    return 2


def unheld_setting(setting) -> dict:
    """The parts of `setting` that a plan file does not hold and that differ from what a later
    command gets by default on this profile (context: the workload's own)."""
    p = setting.profile
    default = {"workload": p.default_workload, "tp": p.default_tp, "stack": p.default_stack,
               "context": setting.acceptance.context}
    return {k: getattr(setting, k) for k, v in default.items() if getattr(setting, k) != v}


def note_plan_setting(args, setting, fields=("workload", "tp", "stack", "context")) -> None:
    """Say on stderr where this command's setting differs from the one a --plan file of
    optimize's / evaluate's JSON was scored at (its figures were that setting's)."""
    rec = schema.recorded_setting(args.plan) if getattr(args, "plan", None) else {}
    here = setting.describe()
    diff = [k for k in fields if k in rec and rec[k] != here[k]]
    if diff:
        print(f"hispec-sim: note: {schema.shown(args.plan)} was scored at {', '.join(f'{k} {rec[k]}' for k in diff)}; "
              f"this run is at {', '.join(f'{k} {here[k]}' for k in diff)} (give "
              f"{' '.join(f'--{k} {rec[k]}' for k in diff)} for that setting)", file=sys.stderr)


def note_weights(setting):
    """Say on stderr when the setting's weights do not fit its GPUs (report_data.weights_note);
    returns the setting."""
    from .report_data import weights_note

    note = weights_note(setting.profile, setting.tp)
    if note:
        print(f"hispec-sim: note: {note}", file=sys.stderr)
    return setting
