"""Bring a new version of the course into your folder without losing your work.

``labkit update SOURCE`` takes the course's new version from SOURCE (the release folder your
instructor publishes, a git address of it, or a folder holding it) and merges it into your
course folder the way nbgitpuller does:

- a file new to the course arrives, and a course file you deleted comes back;
- a course file you never changed is replaced by its new version;
- a course file you changed is kept as it is, and the new version is saved beside it as
  ``NAME.updated-YYYYMMDD.EXT`` (open both and copy over what you want);
- a file that left the course is left where it is; nothing is ever deleted.

To tell which files you changed, your folder holds ``.labkit-course.json``: the course's
files and the hash of each as it was delivered. Every write goes through a temporary file
and a rename, so an update stopped half-way leaves whole files, and running it again
finishes it. ``--dry-run`` lists what would happen and writes nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from labkit.errors import CourseUpdateError

__all__ = [
    "MANIFEST",
    "Change",
    "CourseUpdateError",
    "UpdatePlan",
    "add_arguments",
    "apply",
    "cli",
    "course_files",
    "find_course",
    "git_commit",
    "manifest_for",
    "plan",
    "read_manifest",
    "sha256",
    "update",
    "write_manifest",
]

MANIFEST = ".labkit-course.json"
_FORMAT = "labkit-course/1"
# What belongs to one machine or one person, never to the course.
_LOCAL = frozenset(
    {".git", ".venv", ".labkit", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}
)
_JUNK = frozenset({"__pycache__", ".ipynb_checkpoints"})
# An instructor's checkout holds answers: updating from it would hand them to the learner.
_INSTRUCTOR_ONLY = ("grading/hidden", "masters", "solutions")

ADDED, UPDATED, KEPT, RESTORED, LEFT = "added", "updated", "kept", "restored", "left"


@dataclass
class Change:
    """What an update does to one file."""

    path: str  # relative to the course folder, with forward slashes
    action: str  # added | updated | kept | restored | left
    beside: str = ""  # for "kept": where the new version goes

    def describe(self) -> str:
        """One line for the listing."""
        if self.action == KEPT:
            return f"kept yours  {self.path}  (you changed it; the new version is {self.beside})"
        if self.action == LEFT:
            return f"left as is  {self.path}  (no longer part of the course)"
        return f"{self.action:<11} {self.path}"


@dataclass
class UpdatePlan:
    """Every change an update makes, and the manifest it leaves behind."""

    folder: Path
    source: Path
    changes: list[Change] = field(default_factory=list)
    manifest: dict[str, str] = field(default_factory=dict)  # path -> sha256 as delivered
    version: str = ""
    origin: str = ""  # what the learner named as the source (a folder or git address)

    def count(self, action: str) -> int:
        """How many files get ``action``."""
        return sum(c.action == action for c in self.changes)

    def summary(self) -> str:
        """One line: how many files each kind of change touches."""
        parts = [
            f"{self.count(a)} {label}"
            for a, label in (
                (ADDED, "new"),
                (UPDATED, "updated"),
                (RESTORED, "restored"),
                (KEPT, "kept as you changed them (new version beside)"),
                (LEFT, "no longer in the course (left as is)"),
            )
            if self.count(a)
        ]
        return ", ".join(parts) if parts else "already up to date"


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def course_files(folder: Path) -> list[str]:
    """The course's files in ``folder``: its manifest's list if it has one, else all of them."""
    recorded = read_manifest(folder)
    if recorded is not None:
        return sorted(p for p in recorded["files"] if (folder / p).is_file())
    return sorted(_walk(folder))


def _walk(folder: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        top = here == folder
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _JUNK
            and not (top and d in _LOCAL)
            and not (here / d).is_symlink()  # a link could lead out of the course
        )
        for name in filenames:
            path = here / name
            if name.endswith(".pyc") or path.is_symlink() or (top and name == MANIFEST):
                continue
            yield path.relative_to(folder).as_posix()


def manifest_for(folder: Path, files: list[str] | None = None) -> dict[str, str]:
    """Each course file of ``folder`` and its hash."""
    return {rel: sha256(folder / rel) for rel in (course_files(folder) if files is None else files)}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest in ``folder`` (files, version, source), or None if it has none."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _damaged(path, str(exc)) from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or data.get("format") != _FORMAT:
        raise _damaged(path, "not a course manifest")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not _is_relative(rel):
            raise _damaged(path, f"{rel!r} is not a course file with its hash")
    return data  # type: ignore[no-any-return]


def write_manifest(
    folder: Path, files: dict[str, str], *, version: str = "", origin: str = ""
) -> None:
    """Record the course's files as delivered (atomically)."""
    data = {
        "format": _FORMAT,
        "version": version,
        "source": origin,
        "files": dict(sorted(files.items())),
    }
    content = (json.dumps(data, indent=1) + "\n").encode("utf-8")
    path = folder / MANIFEST
    # An update with nothing to do writes nothing, not even this file.
    if not path.is_file() or path.read_bytes() != content:
        _write_atomic(path, content)


def _damaged(path: Path, why: str) -> CourseUpdateError:
    return CourseUpdateError(
        f"{path} is damaged ({why}). Move it aside and run `labkit update` again: every "
        "file that differs from the new version is then kept and the new one saved beside."
    )


def _is_relative(rel: str) -> bool:
    path = PurePosixPath(rel)
    return not (path.is_absolute() or ".." in path.parts or not path.parts or "\\" in rel)


def _check_relative(rel: str) -> None:
    if not _is_relative(rel):
        raise CourseUpdateError(f"{rel!r} is not a path inside the course; nothing was changed.")


def find_course(start: Path) -> Path:
    """The course folder holding ``start`` (the nearest one up), or the one course inside it."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / MANIFEST).is_file():
            return folder
    for folder in (start, *start.parents):
        if (folder / "notebooks").is_dir() and (folder / "labkit").is_dir():
            return folder
    # From a home folder on a class server: the one course folder in it (``~/course``).
    below = [p.parent for p in start.glob(f"*/{MANIFEST}")]
    if len(below) == 1:
        return below[0]
    if below:
        names = ", ".join(sorted(p.name for p in below))
        raise CourseUpdateError(f"{start} holds several courses ({names}); pass --folder.")
    raise CourseUpdateError(
        f"{start} is not inside a course folder (none has {MANIFEST} or notebooks/ and labkit/). "
        "Run `labkit update` in your course folder, or pass --folder."
    )


def plan(source: Path, folder: Path, *, today: datetime.date | None = None) -> UpdatePlan:
    """What updating ``folder`` from the course version in ``source`` would do."""
    source, folder = source.resolve(), folder.resolve()
    if not source.is_dir():
        raise CourseUpdateError(f"{source} is not a folder holding the course's new version.")
    if source == folder:
        raise CourseUpdateError(f"{source} is your course folder itself; name the new version.")
    found = [p for p in _INSTRUCTOR_ONLY if (source / p).exists()]
    if found:
        raise CourseUpdateError(
            f"{source} holds {', '.join(found)}: it is the instructor's course, with answers. "
            "Update from its release (`labkit assign masters/ --release DIR`)."
        )
    new = manifest_for(source)
    if not new:
        raise CourseUpdateError(f"{source} holds no course files; is that the right folder?")
    recorded = read_manifest(folder)
    old: dict[str, str] = dict(recorded["files"]) if recorded else {}
    stamp = (today or datetime.date.today()).strftime("%Y%m%d")
    result = UpdatePlan(folder, source, manifest=dict(new), version=_version(source))
    for rel, digest in new.items():
        _check_relative(rel)
        mine = folder / rel
        if not mine.exists() and not mine.is_symlink():
            result.changes.append(Change(rel, RESTORED if rel in old else ADDED))
            continue
        if mine.is_file() and not mine.is_symlink():
            have = sha256(mine)
            if have == digest:
                continue  # already this version
            if rel in old and have == old[rel]:
                result.changes.append(Change(rel, UPDATED))  # untouched since delivered
                continue
            if rel in old and old[rel] == digest:
                continue  # yours, and the course did not change it
        beside = _beside(folder, rel, stamp, source / rel)
        if beside is not None:
            result.changes.append(Change(rel, KEPT, beside))
    for rel in sorted(set(old) - set(new)):
        if (folder / rel).exists():
            result.changes.append(Change(rel, LEFT))
    return result


def _beside(folder: Path, rel: str, stamp: str, new: Path) -> str | None:
    """Where the new version of a changed file goes; None if it is already there."""
    path = PurePosixPath(rel)
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    digest = sha256(new)
    for n in range(1, 1000):
        tag = f".updated-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = path.with_name(f"{stem}{tag}{suffix}").as_posix()
        target = folder / candidate
        if not target.exists() and not target.is_symlink():
            return candidate
        if target.is_file() and not target.is_symlink() and sha256(target) == digest:
            return None  # an earlier run saved this very version
    raise CourseUpdateError(f"Too many updated copies of {rel}; tidy them up and try again.")


def git_commit(folder: Path) -> str:
    """The short commit of the git checkout ``folder`` is in ("" outside one)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _version(source: Path) -> str:
    """The new version's name: its git commit, or what its manifest says."""
    # Only a checkout of its own: a plain folder inside some other checkout is not that commit.
    if (source / ".git").exists() and (commit := git_commit(source)):
        return commit
    recorded = read_manifest(source)
    return str(recorded.get("version", "")) if recorded else ""


def apply(update_plan: UpdatePlan) -> None:
    """Make the planned changes, each file whole, then record the new manifest."""
    folder, source = update_plan.folder, update_plan.source
    for change in update_plan.changes:
        if change.action in (ADDED, UPDATED, RESTORED):
            _copy_atomic(source / change.path, folder / change.path)
        elif change.action == KEPT:
            _copy_atomic(source / change.path, folder / change.beside)
    # Written last: an update stopped before this line is finished by the next run.
    write_manifest(
        folder, update_plan.manifest, version=update_plan.version, origin=update_plan.origin
    )


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_atomic(target: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)  # readable like the course files beside it, not mkstemp's 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_git_address(origin: str) -> bool:
    return origin.startswith(("https://", "http://", "git@", "ssh://", "git://", "file://"))


def update(origin: str, folder: Path, *, dry_run: bool = False) -> UpdatePlan:
    """Update ``folder`` from ``origin`` (a folder or a git address); the plan it carried out."""
    if not _is_git_address(origin):
        result = plan(Path(origin).expanduser(), folder)
        result.origin = str(Path(origin).expanduser().resolve())
        if not dry_run:
            apply(result)
        return result
    with tempfile.TemporaryDirectory(prefix="labkit-update-") as scratch:
        clone = Path(scratch) / "course"
        try:
            done = subprocess.run(
                ["git", "clone", "--quiet", "--depth", "1", origin, str(clone)],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise CourseUpdateError(
                f"Could not run git to fetch {origin} ({exc}). Install git, or download the "
                "course's new version and run `labkit update FOLDER`."
            ) from exc
        if done.returncode != 0:
            raise CourseUpdateError(
                f"git could not fetch {origin}: {done.stderr.strip()[-300:]}. Check the "
                "address and your network; nothing was changed."
            )
        result = plan(clone, folder)
        result.origin = origin
        if not dry_run:
            apply(result)
        result.source = Path(origin)  # the clone is gone once this returns
        return result


def add_arguments(parser: Any) -> None:
    """The options of ``labkit update``."""
    parser.add_argument(
        "source",
        nargs="?",
        help="the course's new version: a folder or a git address (default: the last one used)",
    )
    parser.add_argument("--folder", help="your course folder (default: the one you are in)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would change, and change nothing"
    )


def cli(args: Any) -> int:
    """Run ``labkit update`` with parsed arguments."""
    folder = Path(args.folder).resolve() if args.folder else find_course(Path.cwd())
    origin = args.source
    if not origin:
        recorded = read_manifest(folder)
        origin = str(recorded.get("source") or "") if recorded else ""
        if not origin:
            raise CourseUpdateError(
                "Name the course's new version: `labkit update FOLDER` or `labkit update "
                "GIT-ADDRESS` (your instructor gives it); later updates remember it."
            )
    if read_manifest(folder) is None:
        print(
            f"{folder} has no record of the course as delivered ({MANIFEST}): every file that "
            "differs from the new version is treated as yours and kept."
        )
    result = update(origin, folder, dry_run=args.dry_run)
    head = "Would change" if args.dry_run else "Updated"
    print(
        f"{head} {folder} from {origin}"
        + (f" (version {result.version})" if result.version else "")
    )
    for change in result.changes:
        print(f"  {change.describe()}")
    print(("Dry run, nothing written: " if args.dry_run else "") + result.summary() + ".")
    if result.count(KEPT) and not args.dry_run:
        print(
            "Your changed files are as you left them. Open each one's .updated- copy beside it "
            "to see what changed, and copy over what you want."
        )
    return 0
