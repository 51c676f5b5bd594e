"""Whose runtime is this? Every answer of a kit runtime names its owner, folder and instance.

Several kit runtimes can run on one machine: another checkout's, another user's on a shared
server, a team's shared one. Each sends an ``X-Labkit-Runtime`` header with every answer::

    X-Labkit-Runtime: instance=4f0c…; uid=1000; user=alice; folder=9b1e…; shared=0

``instance`` is drawn afresh at each start and also written in the folder's private record
(``runtime.json``), so only this folder's own runtime matches it; ``folder`` is a fingerprint
of the state folder, not its path (the header may travel through a proxy to other people).
A runtime started with ``--shared`` (the systemd unit) is meant for everyone on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEADER", "Identity", "folder_print", "new_identity", "owner_name"]

HEADER = "X-Labkit-Runtime"


@dataclass(frozen=True)
class Identity:
    """What a kit runtime says about itself."""

    instance: str
    uid: int
    user: str
    folder: str  # folder_print() of its state folder
    shared: bool = False

    def header(self) -> str:
        """The header's value."""
        shared = int(self.shared)
        return (
            f"instance={self.instance}; uid={self.uid}; user={self.user}; "
            f"folder={self.folder}; shared={shared}"
        )

    @classmethod
    def parse(cls, value: str | None) -> Identity | None:
        """The identity in a header's value, or None if it is missing or not one."""
        if not value:
            return None
        fields = dict(part.strip().partition("=")[::2] for part in value.split(";"))
        try:
            return cls(
                instance=fields["instance"],
                uid=int(fields["uid"]),
                user=fields.get("user", ""),
                folder=fields["folder"],
                shared=fields.get("shared") == "1",
            )
        except (KeyError, ValueError):
            return None

    def relation(self, instance: str | None, state_dir: Path) -> str:
        """How this runtime stands to the caller: "own", "shared", "user", "folder" or "other".

        ``instance`` is the one in the caller's own verified record (None without one):
        "own" only when they match; "user" and "folder" mean another user's or another
        folder's runtime, "other" one that claims this folder but is not in its record.
        """
        if instance and instance == self.instance:
            return "own"
        if self.shared:
            return "shared"
        if self.uid != _uid():
            return "user"
        if self.folder != folder_print(state_dir):
            return "folder"
        return "other"


def folder_print(state_dir: Path) -> str:
    """A fingerprint of a state folder: equal for one folder, telling nothing of its path."""
    with contextlib.suppress(OSError):
        state_dir = state_dir.resolve()
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


def new_identity(state_dir: Path, *, shared: bool = False) -> Identity:
    """A fresh identity for a runtime starting now for ``state_dir``."""
    return Identity(
        secrets.token_hex(8), _uid(), owner_name(_uid()), folder_print(state_dir), shared
    )


def owner_name(uid: int) -> str:
    """The login name of ``uid`` (its number when it has none)."""
    try:
        import pwd  # Unix only

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else -1
