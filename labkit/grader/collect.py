"""``labkit collect``: each learner's exercise notebook, copied into one folder to grade.

On a class server every learner has a home folder, and in it their copy of the course:
``/home/alice/course/exercises/03-hr-rag.ipynb`` (JupyterHub's layout; The Littlest
JupyterHub names homes ``jupyter-alice``, which ``--path`` can say). ``collect()`` copies
each one to ``SUBMISSIONS/LEARNER.ipynb``, the folder ``labkit grade`` reads, and says who
has none. The learners are the home folders that match the path, or, with ``--hub``, the
users JupyterHub's REST API lists.

It runs as root on a shared machine, over files learners control, so it reads each path one
component at a time without following a symbolic link (a learner's ``course`` linked to
another learner's would otherwise hand in someone else's work), copies only regular files
up to a size limit, and never replaces a submission that is newer than the learner's file
(a late copy an instructor put there by hand) unless told to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import GradingError
from labkit.grader.exercise import KEY_DIR, LEARNER_DIR

__all__ = [
    "COLLECTED",
    "DEFAULT_PATH",
    "KEPT_NEWER",
    "MISSING",
    "UNCHANGED",
    "UNREADABLE",
    "UPDATED",
    "Collected",
    "collect",
    "exercise_name",
    "hub_users",
    "learners_in",
]

DEFAULT_PATH = "{learner}/course/exercises/{exercise}.ipynb"
COLLECTED, UPDATED, UNCHANGED = "collected", "updated", "unchanged"
MISSING, KEPT_NEWER, UNREADABLE = "missing", "kept-newer", "unreadable"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")  # JupyterHub's usual user names


@dataclass
class Collected:
    """What happened to one learner's notebook."""

    learner: str
    status: str  # collected | updated | unchanged | missing | kept-newer | unreadable
    detail: str = ""


def exercise_name(root: Path, exercise: str) -> str:
    """The exercise's full name (``03`` → ``03-hr-rag``), from the course's exercises or keys."""
    names = sorted(
        {p.stem for p in (root / LEARNER_DIR).glob("*.ipynb")}
        | {p.stem for p in (root / KEY_DIR).glob("*.json")}
    )
    if exercise in names:
        return exercise
    prefixes = {exercise, exercise.zfill(2)}
    found = [n for n in names if any(n.startswith(p + s) for p in prefixes for s in "-_")]
    if len(found) == 1:
        return found[0]
    known = ", ".join(names) or f"none in {root / LEARNER_DIR}"
    if found:
        raise GradingError(f"--exercise {exercise} matches several: {known}. Use the full name.")
    raise GradingError(
        f"No exercise {exercise!r} in {root}; known: {known}. Pass --root COURSE, or the "
        "exercise's full name."
    )


def _split(template: str) -> tuple[str, str, list[str]]:
    """The home folder's prefix and suffix around ``{learner}``, and the path below it."""
    parts = template.strip("/").split("/")
    if "{learner}" not in parts[0] or any("{learner}" in p for p in parts[1:]):
        raise GradingError(
            f"--path {template!r} must start with the learner's folder, e.g. {DEFAULT_PATH!r} "
            "or 'jupyter-{learner}/course/exercises/{exercise}.ipynb'."
        )
    if any(p in ("", ".", "..") for p in parts):
        raise GradingError(f"--path {template!r} has an empty, '.' or '..' part.")
    prefix, _, suffix = parts[0].partition("{learner}")
    return prefix, suffix, parts[1:]


def learners_in(homes: Path, template: str = DEFAULT_PATH) -> list[str]:
    """The learners whose home folder is in ``homes`` (``jupyter-alice`` → ``alice``)."""
    prefix, suffix, _ = _split(template)
    try:
        entries = sorted(os.listdir(homes))
    except OSError as exc:
        raise GradingError(
            f"Cannot list {homes} ({exc.strerror}): name the folder that holds the learners' "
            "homes (e.g. /home), and run as a user who may read it."
        ) from exc
    found = []
    for entry in entries:
        if (
            entry.startswith(prefix)
            and entry.endswith(suffix)
            and len(entry) > len(prefix + suffix)
        ):
            name = entry[len(prefix) : len(entry) - len(suffix)]
            if _NAME.fullmatch(name) and (homes / entry).is_dir():
                found.append(name)
    return found


def collect(
    homes: Path,
    exercise: str,
    out: Path,
    *,
    learners: list[str] | None = None,
    template: str = DEFAULT_PATH,
    force: bool = False,
    max_mb: float = 20,
) -> list[Collected]:
    """Copy each learner's notebook into ``out/LEARNER.ipynb``; what happened to each."""
    prefix, suffix, below = _split(template)
    names = learners_in(homes, template) if learners is None else sorted(set(learners))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for learner in names:
        if not _NAME.fullmatch(learner):
            results.append(Collected(learner, UNREADABLE, "not a usable file name"))
            continue
        parts = [f"{prefix}{learner}{suffix}", *(p.format(exercise=exercise) for p in below)]
        results.append(_collect_one(homes, parts, learner, out, force, int(max_mb * 1e6)))
    return results


def _collect_one(
    homes: Path, parts: list[str], learner: str, out: Path, force: bool, limit: int
) -> Collected:
    where = homes.joinpath(*parts)
    try:
        content, mtime = _read_no_links(homes, parts, limit)
    except FileNotFoundError:
        return Collected(learner, MISSING, f"no {where}")
    except _Refused as exc:
        return Collected(learner, UNREADABLE, f"{where}: {exc}")
    except OSError as exc:
        return Collected(learner, UNREADABLE, f"{where}: {exc.strerror or exc}")
    target = out / f"{learner}.ipynb"
    status = COLLECTED
    if target.exists():
        if target.read_bytes() == content:
            return Collected(learner, UNCHANGED, str(where))
        if target.stat().st_mtime > mtime and not force:
            return Collected(
                learner,
                KEPT_NEWER,
                f"{target} is newer than {where}: kept (--force replaces it)",
            )
        status = UPDATED
    _write(target, content, mtime)
    return Collected(learner, status, str(where))


class _Refused(OSError):
    """A path that is a link, or not a regular file, or too large (never raised to a caller)."""


def _read_no_links(homes: Path, parts: list[str], limit: int) -> tuple[bytes, float]:
    """The file at ``homes/parts...``, refusing a symbolic link at any step below ``homes``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(homes, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                step = os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link, or a file
                    raise _Refused(f"{part} is a link or not a folder; not collected") from exc
                raise
            os.close(fd)
            fd = step
        try:
            file_fd = os.open(parts[-1], flags, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused("the notebook is a link; not collected") from exc
            raise
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Refused("not a regular file; not collected")
        if info.st_size > limit:
            raise _Refused(f"{info.st_size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit")
        return handle.read(limit + 1)[:limit], info.st_mtime


def _write(target: Path, content: bytes, mtime: float) -> None:
    """Write a submission whole, with the learner's own time on it."""
    tmp = target.with_name(f".{target.name}.collecting")
    try:
        tmp.write_bytes(content)
        os.chmod(tmp, 0o644)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def hub_users(url: str, token: str, *, admins: bool = False, timeout: float = 30) -> list[str]:
    """The users JupyterHub lists (admins only with ``admins``), page by page."""
    import requests

    base = url.rstrip("/")
    base = base if base.endswith("/hub") else base + "/hub"
    headers = {
        "Authorization": f"token {token}",
        "Accept": "application/jupyterhub-pagination+json",  # JupyterHub 2+: pages
    }
    names: list[str] = []
    offset = 0
    for _ in range(10_000):
        try:
            reply = requests.get(
                f"{base}/api/users",
                headers=headers,
                params={"offset": offset, "limit": 200},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise GradingError(
                f"JupyterHub at {base} does not answer ({type(exc).__name__}). Check --hub "
                "(e.g. http://127.0.0.1:8000) and that the hub is running."
            ) from exc
        if reply.status_code in (401, 403):
            raise GradingError(
                f"JupyterHub at {base} refused the token (HTTP {reply.status_code}). Use an "
                "admin's API token (`jupyterhub token ADMIN`, or the hub's Token page) with "
                "the scope to list users, in JUPYTERHUB_API_TOKEN."
            )
        if reply.status_code != 200:
            raise GradingError(
                f"JupyterHub at {base} answered HTTP {reply.status_code} to the user list; "
                "is --hub the hub's address?"
            )
        try:
            data: Any = reply.json()
        except ValueError as exc:
            raise GradingError(f"{base}/api/users did not answer JSON; is that a hub?") from exc
        items = data.get("items", []) if isinstance(data, dict) else data
        for user in items if isinstance(items, list) else []:
            named = isinstance(user, dict) and isinstance(user.get("name"), str)
            if named and (admins or not user.get("admin")):
                names.append(user["name"])
        page = data.get("_pagination", {}) if isinstance(data, dict) else {}
        following = page.get("next") if isinstance(page, dict) else None
        if not following or not items:
            return names
        offset = int(following.get("offset", offset + len(items)))
    return names
