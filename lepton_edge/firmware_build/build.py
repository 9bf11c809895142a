"""Build the reference firmware for a board, in a cache outside the clone keyed by its inputs.

``build(board)`` runs ``make -C firmware_bridge/firmware BOARD=.. TFLM_DIR=.. LIB_DIR=.. BUILD_DIR=..``
and writes ``build.json`` beside the outputs; ``cached_build(board)`` only looks. The cache
(``$LEPTON_FIRMWARE_CACHE``, default ``~/.cache/lepton-edge/firmware``) holds:

- ``lib/<lib key>/libtflm.a``: TFLite Micro (core, the kernels we link, CMSIS-NN on ARM). Its key is
  the TFLM tree's identity, the compiler's version and the exact commands make would run to build the
  library (so the flags and source list of ``tflm.mk`` and ``board.mk`` are in it, and a change to the
  firmware's own code is not: two boards with the same flags share one library).
- ``objects/<objects key>/``: the library's object files, keyed by the compile commands without the file
  names (``lib/<key>/obj`` points there), so a library whose source list changed compiles only what is new.
- ``build/<board>-<key>/``: ``firmware.elf`` (or ``firmware``, the host executable), ``firmware.map``,
  ``build.json``, ``build.log``. Its key is the library's plus the contents of every file under
  ``firmware_bridge/firmware`` and ``firmware_bridge/c`` (Markdown, ``test_*`` drivers and build
  outputs aside).

The TFLM tree is ``$LEPTON_TFLM_DIR`` when set, else the one ``../shared/third_party/tflm-tree.sh``
lays out (it is laid out on first use) in ``~/.cache/lepton-edge/tflm/<commit>/tflite-micro``.
Hashing is cheap: file contents of the firmware sources; for the default tree, the archives' sha256
from ``SHA256SUMS``; for another tree, the sizes and modification times of its files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from lepton_edge.errors import LeptonError
from lepton_edge.firmware_build.boards import Board, get_board
from lepton_edge.runtime.op_support import firmware_ops

REPO = Path(__file__).resolve().parents[2]
BRIDGE_DIR = REPO / "firmware_bridge"
FIRMWARE_DIR = BRIDGE_DIR / "firmware"
THIRD_PARTY = REPO.parent / "shared" / "third_party"

ENV_CACHE = "LEPTON_FIRMWARE_CACHE"
ENV_TFLM = "LEPTON_TFLM_DIR"
ARM_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib"
QEMU_PACKAGE = "qemu-system-arm"
INSTALL_COMMAND = f"sudo apt-get install {ARM_PACKAGES} {QEMU_PACKAGE}"
BUILD_JSON = "build.json"
FORMAT = 1  # of build.json; a new format is a new build
KEEP_BUILDS = 3  # per board: the newest builds stay in the cache, older ones are removed

BuildProgress = Callable[[str], None]


class ToolMissing(LeptonError):
    """The toolchain, QEMU or the TFLM tree is not installed (exit 1, with the command that installs it)."""

    exit_code = 1


class BuildFailed(LeptonError):
    """make failed (exit 1); the message names the first error and the full log."""

    exit_code = 1


@dataclass(frozen=True)
class FirmwareBuild:
    """A finished build of the firmware for one board."""

    board: str
    profile: str
    directory: Path
    executable: Path            # firmware.elf, or the host executable
    map_file: Path
    text_bytes: int
    data_bytes: int
    bss_bytes: int
    arena_capacity_bytes: int   # ARENA_RAM_BYTES: the static arena
    slot_bytes: int             # SLOT_BYTES: the largest model (plus manifest and signature) a slot holds
    ops: tuple[str, ...]        # core/ops.h, in its order
    key: str = ""
    build_seconds: float = 0.0
    compiler: str = ""
    cached: bool = field(default=False, compare=False)

    @property
    def spec(self) -> Board:
        return get_board(self.board)

    def to_json(self) -> dict:
        """What ``lepton-edge firmware build --json`` prints."""
        return {"board": self.board, "profile": self.profile, "elf": str(self.executable),
                "map": str(self.map_file), "text_bytes": self.text_bytes, "data_bytes": self.data_bytes,
                "bss_bytes": self.bss_bytes, "arena_capacity_bytes": self.arena_capacity_bytes,
                "slot_bytes": self.slot_bytes, "ops": list(self.ops), "kernels": self.spec.kernels,
                "compiler": self.compiler, "key": self.key, "build_seconds": round(self.build_seconds, 1),
                "cached": self.cached}


# ---------------------------------------------------------------- where things are

def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lepton-edge" / "firmware"


def _tflm_archive() -> tuple[str, str] | None:
    """(short commit, sha256) of the pinned tflite-micro archive in ../shared/third_party, if there."""
    try:
        text = (THIRD_PARTY / "SHA256SUMS").read_text()
    except OSError:
        return None
    m = re.search(r"^([0-9a-f]{64})\s+\*?tflite-micro-([0-9a-f]+)\.tar\.gz$", text, re.M)
    return (m.group(2), m.group(1)) if m else None


def default_tflm_tree() -> Path | None:
    """Where ``tflm-tree.sh`` lays out the pinned tree: ``~/.cache/lepton-edge/tflm/<commit>/tflite-micro``."""
    archive = _tflm_archive()
    if archive is None:
        return None
    return Path.home() / ".cache" / "lepton-edge" / "tflm" / archive[0] / "tflite-micro"


def tflm_tree(*, lay_out: bool = True, progress: BuildProgress | None = None) -> Path:
    """The TFLM tree to build with: ``$LEPTON_TFLM_DIR``, else the default one (laid out when missing
    and ``lay_out``). A missing tree is one line of :class:`ToolMissing` naming both places."""
    env = os.environ.get(ENV_TFLM)
    if env:
        own = Path(env).expanduser().resolve()
        if not (own / "tensorflow" / "lite" / "micro").is_dir():
            raise ToolMissing(f"{ENV_TFLM}={env} is not a TFLite Micro tree (no tensorflow/lite/micro in it)")
        return own
    tree = default_tflm_tree()
    script = THIRD_PARTY / "tflm-tree.sh"
    if tree is not None and (tree / ".tree-complete").exists():
        return tree
    if tree is None or not script.exists():
        raise ToolMissing(f"no TFLite Micro tree: {ENV_TFLM} is not set and {script} (with the pinned archives "
                          f"and SHA256SUMS) is missing; set {ENV_TFLM}=/path/to/tflite-micro (a tree with "
                          "tensorflow/lite/micro/tools/make/downloads in place)")
    if not lay_out:
        raise ToolMissing(f"the TFLite Micro tree {tree} is not laid out yet: run `{script} {tree.parent}`")
    if progress:
        progress(f"laying out the TFLite Micro tree in {tree} (from {THIRD_PARTY}, no network)")
    run = subprocess.run(["bash", str(script), str(tree.parent)], capture_output=True, text=True)
    if run.returncode != 0 or not (tree / ".tree-complete").exists():
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolMissing(f"{script} {tree.parent} failed (exit {run.returncode}): {last[0]}")
    return tree


def tflm_tree_available() -> bool:
    """Whether a TFLM tree is set, laid out, or can be laid out here (without doing it)."""
    if os.environ.get(ENV_TFLM):
        return True
    tree = default_tflm_tree()
    return tree is not None and ((tree / ".tree-complete").exists() or (THIRD_PARTY / "tflm-tree.sh").exists())


# ---------------------------------------------------------------- keys

def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def tflm_identity(tree: Path) -> str:
    """What the TFLM tree is, cheaply: the archives' hashes for the default tree, else sizes and mtimes."""
    tree = Path(tree).resolve()
    default = default_tflm_tree()
    if default is not None and tree == default.resolve() and (tree / ".tree-complete").exists():
        sums = (THIRD_PARTY / "SHA256SUMS").read_bytes()
        script = (THIRD_PARTY / "tflm-tree.sh").read_bytes()
        return "archives:" + _sha(sums, script)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "gen", "__pycache__"))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            h.update(f"{os.path.relpath(path, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "stat:" + h.hexdigest()


_NOT_SOURCES = (".md", "~", ".swp", ".pyc", ".o", ".d", ".a", ".elf", ".map", ".bin", ".log")


def sources_digest(bridge_dir: Path = BRIDGE_DIR) -> str:
    """The contents of every file under ``firmware/`` and ``c/`` (Markdown and editor droppings aside)."""
    h = hashlib.sha256()
    for sub in ("firmware", "c"):
        root = Path(bridge_dir) / sub
        for dirpath, dirnames, filenames in os.walk(root):
            # build/ is the Makefile's default BUILD_DIR (git ignores it): outputs, not sources.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "build"))
            for name in sorted(filenames):
                # test_*: test drivers and vectors with their own main(); the Makefile leaves them out.
                if name.startswith((".", "test_")) or name.endswith(_NOT_SOURCES):
                    continue
                path = Path(dirpath) / name
                h.update(path.relative_to(bridge_dir).as_posix().encode() + b"\0")
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


_VARS = ("CC", "CXX", "AR", "SIZE", "KERNELS", "PROFILE", "ARENA_RAM_BYTES", "SLOT_BYTES", "MAX_PAYLOAD",
         "WINDOW", "EXE", "LDSCRIPT")


def _make_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    env["LC_ALL"] = "C"
    return env


def _make_args(board: str, firmware_dir: Path, tree: Path, lib_dir: Path, build_dir: Path) -> list[str]:
    return ["make", "-C", str(firmware_dir), "--no-print-directory", f"BOARD={board}", f"TFLM_DIR={tree}",
            f"LIB_DIR={lib_dir}", f"BUILD_DIR={build_dir}", f"THIRD_PARTY_DIR={THIRD_PARTY}"]


def board_vars(board: str, tree: Path, firmware_dir: Path = FIRMWARE_DIR) -> dict[str, str]:
    """The board's make variables as the firmware's Makefile sees them (CXX, SIZE, ARENA_RAM_BYTES, ...)."""
    with tempfile.TemporaryDirectory(prefix="lepton-fw-vars-") as tmp:
        rule = "__lepton_vars: ; $(foreach v," + " ".join(_VARS) + ",$(info $(v)=$($(v))))@:"
        run = subprocess.run([*_make_args(board, firmware_dir, tree, Path(tmp) / "lib", Path(tmp) / "build"),
                              "-s", "--eval", rule, "__lepton_vars"],
                             capture_output=True, text=True, env=_make_env())
    if run.returncode != 0:
        raise BuildFailed(f"make cannot read the firmware's Makefile for board {board}: "
                          f"{_first_error(run.stderr or run.stdout)}")
    out = {}
    for line in run.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in _VARS:
            out[name] = value.strip()
    return out


def _lib_commands(board: str, tree: Path, firmware_dir: Path) -> str:
    """The commands make would run to build libtflm.a from nothing, with the temporary paths masked."""
    with tempfile.TemporaryDirectory(prefix="lepton-fw-key-") as tmp:
        lib, out = Path(tmp) / "lib", Path(tmp) / "build"
        run = subprocess.run([*_make_args(board, firmware_dir, tree, lib, out), "-n", f"{lib}/libtflm.a"],
                             capture_output=True, text=True, env=_make_env())
    if run.returncode != 0:
        raise BuildFailed(f"make -n cannot plan the TFLM library for board {board}: "
                          f"{_first_error(run.stderr or run.stdout)}")
    return run.stdout.replace(str(lib), "$LIB").replace(str(out), "$BUILD").replace(str(tree), "$TFLM")


@cache
def _compiler_version(compiler: str) -> str:
    exe = compiler.split()[0] if compiler else ""
    if not exe or shutil.which(exe) is None:
        return ""
    run = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return run.stdout.splitlines()[0].strip() if run.stdout else ""


@dataclass(frozen=True)
class Keys:
    lib: str       # the library: tree, compiler, every command that builds it (flags and source list)
    build: str     # the firmware: the library's key, the firmware's sources, the board's variables
    compiler: str
    objects: str   # TFLM object files: tree, compiler, the compile commands with the file names left out


def _object_templates(commands: str) -> str:
    """The distinct compile commands of the library with the source and object names masked: what an
    object file depends on besides its own source. Libraries whose source lists differ share objects."""
    templates = set()
    for line in commands.splitlines():
        m = re.search(r"\s-c\s+(\S+)\s+-o\s+(\S+)", line)
        if m:
            templates.add(line[:m.start()] + " -c $SRC -o $OBJ" + line[m.end():])
    return "\n".join(sorted(templates))


def build_keys(board: str, tree: Path, bridge_dir: Path = BRIDGE_DIR) -> Keys:
    """The cache keys of the board's TFLM library and of its firmware build (no compiling)."""
    firmware_dir = Path(bridge_dir) / "firmware"
    variables = board_vars(board, tree, firmware_dir)
    compiler = _compiler_version(variables.get("CXX", ""))
    commands = _lib_commands(board, tree, firmware_dir)
    identity = tflm_identity(tree)
    lib = _sha(f"format {FORMAT}", identity, compiler, commands)[:16]
    build = _sha(lib, sources_digest(bridge_dir), json.dumps(variables, sort_keys=True))[:16]
    objects = _sha(f"format {FORMAT}", identity, compiler, _object_templates(commands))[:16]
    return Keys(lib, build, compiler, objects)


# ---------------------------------------------------------------- ops, sizes

def _sizes(size_tool: str, exe: Path) -> tuple[int, int, int]:
    run = subprocess.run([*(size_tool or "size").split(), "-B", str(exe)], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or len(lines) < 2:
        raise BuildFailed(f"{size_tool} {exe} failed: {_first_error(run.stderr)}")
    text, data, bss = (int(x) for x in lines[1].split()[:3])
    return text, data, bss


def _first_error(log: str) -> str:
    lines = [x.strip() for x in log.splitlines() if x.strip()]
    for pattern in (r"\berror\b", r"\*\*\*", r"undefined reference", r"No rule"):
        for line in lines:
            if re.search(pattern, line, re.I):
                return line[:300]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------- toolchain

def check_toolchain(board: Board, variables: dict[str, str] | None = None) -> None:
    """One line of :class:`ToolMissing` with the command that installs what the board's build needs."""
    if shutil.which("make") is None:
        raise ToolMissing("make is not installed: install it with `sudo apt-get install make`")
    if board.is_host:
        cxx = (variables or {}).get("CXX") or "g++"
        if shutil.which(cxx.split()[0]) is None:
            raise ToolMissing(f"{cxx} is not installed: install it with `sudo apt-get install g++`")
        return
    cxx = (variables or {}).get("CXX") or "arm-none-eabi-g++"
    exe = shutil.which(cxx.split()[0])
    if exe is None:
        raise ToolMissing(f"{cxx.split()[0]} is not installed: install the toolchain with `{INSTALL_COMMAND}` "
                          "(or `make toolchain`)")
    specs = subprocess.run([exe, "-print-file-name=nano.specs"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(specs):
        raise ToolMissing(f"newlib for {cxx.split()[0]} is not installed: install it with `{INSTALL_COMMAND}` "
                          "(or `make toolchain`)")


def check_qemu() -> str:
    exe = shutil.which("qemu-system-arm")
    if exe is None:
        raise ToolMissing(f"qemu-system-arm is not installed: install it with `sudo apt-get install {QEMU_PACKAGE}` "
                          "(or `make toolchain`)")
    return exe


# ---------------------------------------------------------------- the cache

def _build_dir(board: str, key: str) -> Path:
    return cache_root() / "build" / f"{board}-{key}"


def _load(directory: Path, cached: bool = True) -> FirmwareBuild | None:
    try:
        meta = json.loads((directory / BUILD_JSON).read_text())
        if meta.get("format") != FORMAT:
            return None
        build = FirmwareBuild(
            board=meta["board"], profile=meta["profile"], directory=directory,
            executable=directory / meta["executable"], map_file=directory / meta["map_file"],
            text_bytes=int(meta["text_bytes"]), data_bytes=int(meta["data_bytes"]), bss_bytes=int(meta["bss_bytes"]),
            arena_capacity_bytes=int(meta["arena_capacity_bytes"]), slot_bytes=int(meta["slot_bytes"]),
            ops=tuple(meta["ops"]), key=meta.get("key", ""), build_seconds=float(meta.get("build_seconds", 0)),
            compiler=meta.get("compiler", ""), cached=cached)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return build if build.executable.exists() else None


def _prune(board: str, keep: Path, builds: int = KEEP_BUILDS) -> None:
    """Drop all but the newest ``builds`` builds of ``board`` (each source edit makes one)."""
    others = sorted((p for p in keep.parent.glob(f"{board}-*") if p.is_dir() and p != keep
                     and re.fullmatch(rf"{re.escape(board)}-[0-9a-f]{{16}}", p.name)),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[builds - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _save(fw: FirmwareBuild, where: Path | None = None) -> None:
    meta = {"format": FORMAT, **asdict(fw)}
    meta.pop("cached")
    meta["directory"] = str(fw.directory)
    meta["executable"] = fw.executable.name
    meta["map_file"] = fw.map_file.name
    meta["ops"] = list(fw.ops)
    where = where or fw.directory
    tmp = where / (BUILD_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, where / BUILD_JSON)


def cached_build(board: str) -> FirmwareBuild | None:
    """The cached build of the current sources for ``board``, or None. Never builds, never lays out a tree,
    never raises for a missing toolchain or tree (None then)."""
    spec = get_board(board)
    try:
        tree = tflm_tree(lay_out=False)
        keys = build_keys(spec.name, tree)
    except (LeptonError, OSError):  # no tree, no make, a Makefile that does not parse: nothing cached
        return None
    return _load(_build_dir(spec.name, keys.build))


@contextmanager
def _lock(path: Path, progress: BuildProgress | None, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(f"waiting for another firmware build to finish ({what})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_out(fw: FirmwareBuild, out_dir: Path) -> FirmwareBuild:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (fw.executable.name, fw.map_file.name, "build.log"):
        src = fw.directory / name
        if src.exists():
            shutil.copy2(src, out_dir / name)
    moved = FirmwareBuild(**{**asdict(fw), "directory": out_dir, "executable": out_dir / fw.executable.name,
                             "map_file": out_dir / fw.map_file.name, "ops": fw.ops, "cached": fw.cached})
    _save(moved)
    return moved


def build(board: str, *, progress: BuildProgress | None = None, out_dir: Path | None = None,
          jobs: int | None = None) -> FirmwareBuild:
    """The firmware for ``board``: from the cache, else built (progress lines through ``progress``).
    With ``out_dir``, the outputs and build.json are copied there and the result points at the copies."""
    spec = get_board(board)
    check_toolchain(spec)
    tree = tflm_tree(lay_out=True, progress=progress)
    keys = build_keys(spec.name, tree)
    final = _build_dir(spec.name, keys.build)
    fw = _load(final)
    if fw is None:
        with _lock(cache_root() / "build.lock", progress, spec.name):
            fw = _load(final) or _make(spec, tree, keys, final, progress, jobs)
    return _copy_out(fw, Path(out_dir)) if out_dir is not None else fw


def _make(spec: Board, tree: Path, keys: Keys, final: Path, progress: BuildProgress | None,
          jobs: int | None) -> FirmwareBuild:
    variables = board_vars(spec.name, tree)
    check_toolchain(spec, variables)
    lib_dir = cache_root() / "lib" / keys.lib
    lib_cached = (lib_dir / "libtflm.a").exists()
    work = final.parent / f"{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lib_dir.mkdir(parents=True, exist_ok=True)
    # The library's objects live in a directory keyed by their compile flags only: a library with one
    # more kernel (another source list, another lib key) compiles that kernel, not the rest again.
    objects = cache_root() / "objects" / keys.objects
    objects.mkdir(parents=True, exist_ok=True)
    if not (lib_dir / "obj").exists():
        (lib_dir / "obj").symlink_to(objects, target_is_directory=True)
    args = _make_args(spec.name, FIRMWARE_DIR, tree, lib_dir, work)
    plan = subprocess.run([*args, "-n"], capture_output=True, text=True, env=_make_env())
    total = len(re.findall(r"\s-c\s", plan.stdout)) if plan.returncode == 0 else 0
    jobs = jobs or os.cpu_count() or 1
    say = progress or (lambda _m: None)
    what = "the firmware (TFLM library cached)" if lib_cached else "the TFLM library and the firmware"
    say(f"building firmware for {spec.name}: {what}, {total} files to compile with make -j{jobs}; "
        f"log in {work / 'build.log'}")
    start = time.monotonic()
    with open(work / "build.log", "w") as log:
        proc = subprocess.Popen([*args, f"-j{jobs}"], stdout=log, stderr=subprocess.STDOUT, env=_make_env(),
                                preexec_fn=_own_group_dying_with_parent)
        try:
            last_report = start
            while proc.poll() is None:
                time.sleep(0.5)
                now = time.monotonic()
                if now - last_report >= 20:
                    last_report = now
                    done = _objects_since(start, (lib_dir / "obj").resolve(), work)
                    share = f"{min(done, total)}/{total} files" if total else f"{done} files"
                    say(f"firmware {spec.name}: {share} compiled ({_clock(now - start)})")
        except BaseException:  # Ctrl-C, SIGTERM: make and every compiler it started stop too
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                proc.terminate()
            proc.wait()
            shutil.rmtree(work, ignore_errors=True)
            raise
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        text = (work / "build.log").read_text(errors="replace")
        kept = final.parent / f"{final.name}.failed.log"
        shutil.copy2(work / "build.log", kept)
        shutil.rmtree(work, ignore_errors=True)
        raise BuildFailed(f"building firmware for {spec.name} failed: {_first_error(text)} (full log: {kept})")
    exe_name = variables.get("EXE") or ("firmware" if spec.is_host else "firmware.elf")
    exe = work / exe_name
    if not exe.exists():
        found = [p for p in (work / "firmware.elf", work / "firmware") if p.exists()]
        if not found:
            raise BuildFailed(f"make succeeded but {exe} is missing (log: {work / 'build.log'})")
        exe = found[0]
    text_b, data_b, bss_b = _sizes(variables.get("SIZE", ""), exe)
    try:
        arena = int(variables.get("ARENA_RAM_BYTES", "0"), 0)
        slot = int(variables.get("SLOT_BYTES", "0"), 0)
    except ValueError as exc:
        raise BuildFailed(f"board.mk of {spec.name}: {exc}") from None
    fw = FirmwareBuild(board=spec.name, profile=variables.get("PROFILE") or spec.profile, directory=final,
                       executable=final / exe.name, map_file=final / "firmware.map", text_bytes=text_b,
                       data_bytes=data_b,
                       bss_bytes=bss_b, arena_capacity_bytes=arena, slot_bytes=slot, ops=tuple(firmware_ops()),
                       key=keys.build, build_seconds=seconds, compiler=keys.compiler, cached=False)
    _save(fw, work)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    _prune(spec.name, keep=final)
    say(f"firmware {spec.name} built in {_clock(seconds)}: {final / exe.name} "
        f"(text {text_b:,} B, data {data_b:,} B, bss {bss_b:,} B)")
    return _load(final, cached=False)  # type: ignore[return-value]


def _own_group_dying_with_parent() -> None:  # runs in make's process between fork and exec
    os.setpgrp()  # make and its compilers: one group, stopped together
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: we die, make is told
    except Exception:
        pass


def _objects_since(start_monotonic: float, *dirs: Path) -> int:
    since = time.time() - (time.monotonic() - start_monotonic) - 1
    count = 0
    for root in dirs:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith(".o"):
                    try:
                        if os.stat(os.path.join(dirpath, name)).st_mtime >= since:
                            count += 1
                    except OSError:
                        pass
    return count


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

