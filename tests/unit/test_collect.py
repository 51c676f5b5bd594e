"""labkit collect: every learner's notebook into SUBMISSIONS/, those without one named, nothing newer lost."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from labkit.cli import main
from labkit.errors import GradingError
from labkit.grader import collect
from labkit.grader.run import find_submissions

PROJECT = Path(__file__).resolve().parents[2]
NAME = "03-hr-rag"


def _home(homes: Path, folder: str, content: bytes | None, exercise: str = NAME) -> Path:
    path = homes / folder / "course" / "exercises" / f"{exercise}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.fixture
def homes(tmp_path: Path) -> Path:
    """alice and frank have the notebook; bob has no course, carol another exercise only;
    mallory's course is a link to alice's, and trudy's notebook a link to a system file."""
    homes = tmp_path / "home"
    _home(homes, "alice", b'{"cells": [], "who": "alice"}')
    _home(homes, "frank", b'{"cells": [], "who": "frank"}')
    (homes / "bob").mkdir()
    _home(homes, "carol", b"{}", exercise="01-api-script")
    (homes / "mallory").mkdir()
    (homes / "mallory" / "course").symlink_to(homes / "alice" / "course")
    trudy = _home(homes, "trudy", None)
    trudy.symlink_to("/etc/hostname")
    (homes / ".hidden").mkdir()
    return homes


def test_the_exercise_is_named_by_its_number() -> None:
    assert collect.exercise_name(PROJECT, "03") == NAME
    assert collect.exercise_name(PROJECT, "3") == NAME
    with pytest.raises(GradingError, match="No exercise '99'"):
        collect.exercise_name(PROJECT, "99")


def test_collects_each_notebook_and_names_those_without(
    homes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "SUBMISSIONS"
    args = ["collect", str(homes), "--exercise", "03", "--out", str(out), "--root", str(PROJECT)]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["alice.ipynb", "frank.ipynb"]
    source = homes / "alice/course/exercises" / f"{NAME}.ipynb"
    assert (out / "alice.ipynb").read_bytes() == source.read_bytes()
    assert (out / "alice.ipynb").stat().st_mtime == source.stat().st_mtime  # the learner's time
    assert f"{NAME}: 2 notebooks copied" in said
    assert "no notebook (skipped): bob, carol" in said
    # Links are never followed: no one hands in another learner's work or a system file.
    assert "not copied, mallory: " in said and "course is a link" in said
    assert "not copied, trudy: " in said and "the notebook is a link" in said
    # The folder is what labkit grade reads: one row per learner, named by the learner.
    assert [(s.learner, s.skipped) for s in find_submissions(out)] == [("alice", ""), ("frank", "")]
    # Collecting again copies nothing new.
    assert main(args) == 0
    assert "0 notebooks copied" in capsys.readouterr().out


def test_a_newer_submission_is_kept_unless_forced(homes: Path, tmp_path: Path) -> None:
    out = tmp_path / "SUBMISSIONS"
    collect.collect(homes, NAME, out)
    late = out / "alice.ipynb"
    late.write_bytes(b'{"cells": [], "who": "alice, emailed late"}')  # newer than her home copy
    os.utime(late, (late.stat().st_mtime + 60,) * 2)
    result = {r.learner: r for r in collect.collect(homes, NAME, out)}
    assert result["alice"].status == collect.KEPT_NEWER and "--force" in result["alice"].detail
    assert b"emailed late" in late.read_bytes()
    # Work the learner saved after that copy replaces it, and so does --force.
    source = homes / "alice/course/exercises" / f"{NAME}.ipynb"
    source.write_bytes(b'{"cells": [], "who": "alice, later"}')
    os.utime(source, (late.stat().st_mtime + 60,) * 2)
    assert {r.learner: r.status for r in collect.collect(homes, NAME, out)}["alice"] == "updated"
    assert b"later" in late.read_bytes()
    late.write_bytes(b"{}")
    os.utime(late, (source.stat().st_mtime + 60,) * 2)
    collect.collect(homes, NAME, out, force=True)
    assert b"later" in late.read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written file


def test_too_large_and_odd_names_are_refused(homes: Path, tmp_path: Path) -> None:
    _home(homes, "zed", b"x" * 2_000_000)
    got = {r.learner: r for r in collect.collect(homes, NAME, tmp_path / "S", max_mb=1)}
    assert got["zed"].status == collect.UNREADABLE and "over the 1 MB limit" in got["zed"].detail
    got = {r.learner: r for r in collect.collect(homes, NAME, tmp_path / "S", learners=["../x"])}
    assert got["../x"].status == collect.UNREADABLE
    assert not (tmp_path / "x.ipynb").exists()


def test_the_littlest_jupyterhub_layout(tmp_path: Path) -> None:
    homes = tmp_path / "home"
    _home(homes, "jupyter-alice", b"{}")
    (homes / "ubuntu").mkdir()
    template = "jupyter-{learner}/course/exercises/{exercise}.ipynb"
    assert collect.learners_in(homes, template) == ["alice"]
    got = collect.collect(homes, NAME, tmp_path / "S", template=template)
    assert [(r.learner, r.status) for r in got] == [("alice", "collected")]
    with pytest.raises(GradingError, match="must start with the learner's folder"):
        collect.collect(homes, NAME, tmp_path / "S", template="course/{learner}.ipynb")


class _Hub(BaseHTTPRequestHandler):
    """JupyterHub's GET /hub/api/users, two users a page, admin marked."""

    users: ClassVar[list[dict[str, Any]]] = [
        {"name": "alice", "admin": False},
        {"name": "teacher", "admin": True},
        {"name": "bob", "admin": False},
        {"name": "ghost", "admin": False},
    ]

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "token secret":
            self.send_response(403)
            self.end_headers()
            return
        offset = int(self.path.split("offset=")[1].split("&")[0])
        page = self.users[offset : offset + 2]
        more = offset + 2 < len(self.users)
        body = {
            "items": page,
            "_pagination": {"offset": offset, "limit": 2, "total": len(self.users)},
        }
        body["_pagination"]["next"] = {"offset": offset + 2, "limit": 2} if more else None
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hub_mode_collects_for_the_hubs_users(
    homes: Path,
    tmp_path: Path,
    hub: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert collect.hub_users(hub, "secret") == ["alice", "bob", "ghost"]
    assert collect.hub_users(hub, "secret", admins=True) == ["alice", "teacher", "bob", "ghost"]
    out = tmp_path / "S"
    base = ["collect", str(homes), "--exercise", NAME, "--out", str(out), "--root", str(PROJECT)]
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert main([*base, "--hub", hub]) == 1
    assert "JUPYTERHUB_API_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    assert main([*base, "--hub", hub]) == 0
    said = capsys.readouterr().out
    assert [p.name for p in out.iterdir()] == ["alice.ipynb"]  # frank is not a hub user
    assert "no notebook (skipped): bob, ghost" in said
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "wrong")
    assert main([*base, "--hub", hub]) == 1
    assert "refused the token (HTTP 403)" in capsys.readouterr().err


def test_a_hub_that_is_down_gets_a_clear_message() -> None:
    with pytest.raises(GradingError, match="does not answer"):
        collect.hub_users("http://127.0.0.1:9", "secret", timeout=5)
