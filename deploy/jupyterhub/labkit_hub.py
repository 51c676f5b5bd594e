"""The hub's side of a class: a model-proxy token per learner, and the course in each home.

``jupyterhub_config.py`` (beside this file) runs ``spawn_hook(settings)`` before each learner's
server starts. The hook

1. keeps one random token per learner in ``STATE/tokens.json`` (made on first start, kept
   after), writes nginx's token map from it (whole, by rename) and reloads nginx when it changed;
2. copies the course into ``~/course`` on the first start, as the learner (never as root);
3. hands the server its environment: who the learner is, where the shared runtime is, and
   their token. Nobody types a token.

Run as a program it lists the learners with a token, or takes one away::

    sudo .venv/bin/python deploy/jupyterhub/labkit_hub.py list
    sudo .venv/bin/python deploy/jupyterhub/labkit_hub.py revoke alice
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import runtime
from labkit.errors import CourseUpdateError, InvalidInput, RuntimeUnavailable

__all__ = [
    "MARK",
    "HubSettings",
    "Ports",
    "TokenStore",
    "check_name",
    "check_reachable",
    "find_http_proxy",
    "give_course",
    "grant",
    "learner_environment",
    "main",
    "map_text",
    "reload_proxy",
    "service_token",
    "spawn_hook",
    "update_map",
    "wait_for_token",
    "write_private",
]

# Every line the hub writes into the token map ends with this; lines without it (tokens an
# instructor added by hand, for staff say) are kept as they are.
MARK = "# labkit-hub"
# A login name as Debian's useradd accepts it: safe inside an nginx map line and a path.
_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class HubSettings:
    """Where the hub keeps its state, the shared runtime's address and the course to hand out."""

    state_dir: Path
    token_map: Path
    reload_command: tuple[str, ...]
    runtime_url: str
    ca_bundle: Path | None
    course: str  # a folder or a git address; "" hands out nothing
    venv: Path

    @classmethod
    def from_env(cls) -> HubSettings:
        """The settings from ``LABKIT_HUB_*`` variables, with the instructor guide's defaults."""
        get = os.environ.get
        ca = get("LABKIT_HUB_CA_BUNDLE", "")
        return cls(
            state_dir=Path(get("LABKIT_HUB_STATE", "/var/lib/labkit-hub")),
            token_map=Path(get("LABKIT_HUB_TOKEN_MAP", "/etc/nginx/labkit-tokens.map")),
            reload_command=tuple(shlex.split(get("LABKIT_HUB_RELOAD", "nginx -s reload"))),
            runtime_url=get("LABKIT_HUB_RUNTIME_URL", "https://llm.example.org").rstrip("/"),
            ca_bundle=Path(ca) if ca else None,
            course=get("LABKIT_HUB_COURSE", "/opt/course-release"),
            venv=Path(get("LABKIT_HUB_VENV", sys.prefix)),
        )


def write_private(path: Path, text: str) -> None:
    """Write ``path`` whole (a reader sees the old file or the new one), readable by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)  # mkstemp made it 0600, and the rename keeps that
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


class TokenStore:
    """One random token per learner, in a JSON file only its owner (root) can read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()  # servers may start at the same time

    def load(self) -> dict[str, str]:
        """Every learner's token (empty before the first one)."""
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"{self.path} cannot be read as the learners' tokens ({exc}): restore it from a "
                "backup, or delete it and restart every learner's server for new tokens."
            ) from exc
        return {str(name): str(token) for name, token in found.items()}

    def token_for(self, name: str) -> tuple[str, dict[str, str]]:
        """``name``'s token (made now if they have none) and every learner's tokens."""
        check_name(name)
        with self.lock:
            tokens = self.load()
            if name not in tokens:
                tokens[name] = secrets.token_urlsafe(32)
                write_private(self.path, json.dumps(tokens, indent=1, sort_keys=True) + "\n")
            return tokens[name], tokens

    def revoke(self, name: str) -> dict[str, str] | None:
        """Remove ``name``'s token; the remaining tokens, or None if they had none."""
        with self.lock:
            tokens = self.load()
            if tokens.pop(name, None) is None:
                return None
            write_private(self.path, json.dumps(tokens, indent=1, sort_keys=True) + "\n")
            return tokens


def check_name(name: str) -> None:
    """Refuse a hub user name that cannot be a login name (it goes into nginx's map)."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"The hub user {name!r} cannot get a model token: learners here are system users, "
            "whose names are lower-case letters, digits, '.', '_' and '-' (at most 32)."
        )


def map_text(current: str, tokens: dict[str, str]) -> str:
    """The token map: the lines the hub did not write, then one line per learner."""
    kept = [line for line in current.splitlines() if not line.rstrip().endswith(MARK)]
    ours = [f'"~^Bearer {token}$"  {name};  {MARK}' for name, token in sorted(tokens.items())]
    return "".join(line + "\n" for line in kept + ours)


def update_map(path: Path, tokens: dict[str, str]) -> bool:
    """Bring nginx's token map in line with ``tokens``; True if the file changed."""
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    wanted = map_text(current, tokens)
    if wanted == current:
        return False
    write_private(path, wanted)
    return True


def reload_proxy(command: tuple[str, ...]) -> None:
    """Have nginx read the token map again (it keeps serving while it does)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeUnavailable(
            f"`{shlex.join(command)}` could not run ({exc}): set LABKIT_HUB_RELOAD to the "
            "command that reloads nginx on this server."
        ) from exc
    if done.returncode != 0:
        raise RuntimeUnavailable(
            f"`{shlex.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}. "
            "Check nginx with `nginx -t`; the learner's token is in the map and works once "
            "nginx reloads."
        )


def wait_for_token(url: str, token: str, ca_bundle: Path | None, timeout: float = 15.0) -> None:
    """Return once the proxy at ``url`` lets ``token`` in (it answers something but 401).

    Three times in a row, each on a new connection: while nginx reloads, its old worker may
    still take a connection or two with the old map.
    """
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url + "/", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    why, in_a_row = "", 0
    while time.monotonic() < deadline:
        try:
            with opener.open(request, timeout=5):
                in_a_row += 1
        except urllib.error.HTTPError as exc:
            # Any answer but 401 lets the token in: the runtime behind may be restarting.
            in_a_row = in_a_row + 1 if exc.code != 401 else 0
            why = "it still answers 401 to the new token"
        except (OSError, ValueError) as exc:
            in_a_row = 0
            why = f"it does not answer ({getattr(exc, 'reason', exc)})"
        if in_a_row == 3:
            return
        time.sleep(0.1)
    raise RuntimeUnavailable(
        f"The model proxy at {url}: {why}. Check that nginx runs, that its site includes the "
        "token map this hub writes (LABKIT_HUB_TOKEN_MAP), and LABKIT_HUB_RUNTIME_URL."
    )


def grant(settings: HubSettings, store: TokenStore, name: str) -> str:
    """``name``'s token, in nginx's map and accepted by the proxy before their server starts."""
    with store.lock:  # one token, map write and reload at a time: no learner's line is lost
        token, tokens = store.token_for(name)
        changed = update_map(settings.token_map, tokens)
        if changed:
            reload_proxy(settings.reload_command)
    if changed:
        wait_for_token(settings.runtime_url, token, settings.ca_bundle)
    return token


def give_course(source: str, account: pwd.struct_passwd) -> bool:
    """Copy the course into the learner's ``~/course`` unless it is there; True if copied.

    The copy runs as the learner, so it can write nothing they could not, and a link they
    planted in their home leads nowhere they could not go themselves.
    """
    home = Path(account.pw_dir)
    target = home / "course"
    if not source or os.path.lexists(target):
        return False  # later versions arrive with `labkit update`, which keeps their edits
    remote = "://" in source or source.endswith(".git") or source.startswith("git@")
    if not remote and not Path(source).is_dir():
        raise CourseUpdateError(
            f"The course to hand out, {source}, is not a folder: set LABKIT_HUB_COURSE to a "
            "release folder (`labkit assign masters/ --release DIR`) or its git address."
        )
    command = (
        ["git", "clone", "--quiet", "--depth", "1", source, str(target)]
        if remote
        else ["cp", "-R", "--", source, str(target)]
    )
    as_learner: dict[str, Any] = {}
    if os.geteuid() == 0 and account.pw_uid != 0:
        as_learner = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=env, cwd=home, **as_learner
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CourseUpdateError(f"Copying the course for {account.pw_name} failed: {exc}") from exc
    if done.returncode != 0:
        raise CourseUpdateError(
            f"Copying the course {source} into {target} as {account.pw_name} failed: "
            f"{done.stderr.strip()}. Learners must be able to read it (chmod -R a+rX)."
        )
    return True


def learner_environment(settings: HubSettings, name: str, home: Path, token: str) -> dict[str, str]:
    """What a learner's server (and every kernel and terminal in it) gets."""
    env = {
        # Quiz order and grading names follow the hub user.
        "LABKIT_LEARNER": name,
        # The shared runtime, through the token proxy: discovery takes this address first.
        "LABKIT_BASE_URL": settings.runtime_url,
        "LABKIT_API_KEY": token,
        # Ollama's own Python client reads both; OpenAI's reads its pair when it is built
        # without arguments (code that passes api_key="..." must pass this token instead).
        "OLLAMA_HOST": settings.runtime_url,
        "OLLAMA_API_KEY": token,
        "OPENAI_BASE_URL": settings.runtime_url + "/v1",
        "OPENAI_API_KEY": token,
        # The learner's own state folder: a runtime they start with `labkit up` (and what
        # `labkit down` stops) is theirs alone, never the shared one.
        "LABKIT_HOME": str(home / ".labkit"),
        # `./lab` in ~/course uses the class environment as it is.
        "LABKIT_VENV": str(settings.venv),
        "PATH": f"{settings.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
    }
    if settings.ca_bundle:
        env["REQUESTS_CA_BUNDLE"] = str(settings.ca_bundle)  # labkit and requests
        env["SSL_CERT_FILE"] = str(settings.ca_bundle)  # the openai and ollama clients
    return env


class Ports:
    """Loopback ports for learners' servers, never the same one for two learners.

    JupyterHub's local spawner picks a free port for each server as it starts it; two servers
    starting at once can be given the same one. The second then cannot listen, the hub finds
    the first one answering there and sends one learner's requests to the other's server.
    """

    def __init__(self, free_port: Callable[[], int] | None = None) -> None:
        self.given: dict[str, int] = {}  # learner -> the port of their server
        self.free_port = free_port or runtime.free_port

    def pick(self, name: str) -> int:
        """A port free now and given to no other learner's server."""
        taken = {port for who, port in self.given.items() if who != name}
        while (port := self.free_port()) in taken:
            pass
        self.given[name] = port
        return port


def spawn_hook(settings: HubSettings) -> Callable[[Any], Awaitable[None]]:
    """JupyterHub's ``Spawner.pre_spawn_hook`` for these settings."""
    store = TokenStore(settings.state_dir / "tokens.json")
    ports = Ports()  # the hook runs in the hub's one event loop: no lock needed

    async def pre_spawn_hook(spawner: Any) -> None:
        name = spawner.user.name
        check_name(name)
        try:
            account = pwd.getpwnam(name)
        except KeyError as exc:
            raise InvalidInput(
                f"The hub user {name} has no system account: create it with "
                f"`sudo useradd --create-home --groups learners {name}`."
            ) from exc
        # Blocking work goes to threads: the hub serves everyone else meanwhile.
        token = await asyncio.to_thread(grant, settings, store, name)
        if await asyncio.to_thread(give_course, settings.course, account):
            spawner.log.info("Copied the course %s into %s's home", settings.course, name)
        env = learner_environment(settings, name, Path(account.pw_dir), token)
        spawner.environment = {**spawner.environment, **env}  # this spawner's own dict
        spawner.port = ports.pick(name)

    return pre_spawn_hook


def service_token(state_dir: Path) -> str:
    """The instructor tools' API token (``STATE/instructor-api-token``), made on first use."""
    path = state_dir / "instructor-api-token"
    with contextlib.suppress(FileNotFoundError):
        if token := path.read_text(encoding="ascii").strip():
            return token
    token = secrets.token_hex(32)
    write_private(path, token + "\n")
    return token


def find_http_proxy(venv: Path) -> str:
    """configurable-http-proxy: on PATH, or installed with npm into ``VENV/node``."""
    local = venv / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    found = shutil.which("configurable-http-proxy") or (str(local) if local.exists() else None)
    if found is None:
        raise InvalidInput(
            "JupyterHub's proxy, configurable-http-proxy, is not installed: run "
            f"`npm install --prefix {venv / 'node'} configurable-http-proxy@4`."
        )
    return found


def check_reachable(venv: Path) -> None:
    """Refuse a class environment that learners cannot run (its Python in a private folder)."""
    python = (venv / "bin" / "python").resolve()
    for folder in [*python.parents, *(venv / "bin").resolve().parents]:
        if not folder.stat().st_mode & 0o001:
            raise InvalidInput(
                f"Learners cannot run {python}: {folder} is closed to other users, and each "
                "learner's server runs as that learner. Build the class environment with a "
                "Python every user can run, e.g. `PYTHON=/usr/bin/python3 ./lab setup` in a "
                "fresh checkout under /opt."
            )


def main(argv: list[str] | None = None) -> int:
    """``list`` the learners with a token, or ``revoke NAME``'s."""
    parser = argparse.ArgumentParser(prog="labkit_hub.py", description=main.__doc__)
    parser.add_argument("action", choices=["list", "revoke"])
    parser.add_argument("name", nargs="?", help="the learner (for revoke)")
    args = parser.parse_args(argv)
    settings = HubSettings.from_env()
    store = TokenStore(settings.state_dir / "tokens.json")
    try:
        if args.action == "list":
            for name in sorted(store.load()):
                print(name)
            return 0
        if not args.name:
            parser.error("revoke needs the learner's name")
        remaining = store.revoke(args.name)
        if remaining is None:
            print(f"{args.name} has no token.")
            return 1
        if update_map(settings.token_map, remaining):
            reload_proxy(settings.reload_command)
    except (InvalidInput, RuntimeUnavailable, OSError) as exc:
        print(f"labkit_hub: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.name}'s token no longer opens the model proxy. Their next server start makes "
        "a new one: remove them from the hub (its admin page) to keep them out."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
