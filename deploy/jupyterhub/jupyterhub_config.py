# JupyterHub for a Local LLM Lab class on one server (see README.md beside this file).
#
# Learners are system users (group "learners") who log in with their password. Each one's
# server runs as them, gets the course in ~/course on its first start, and talks to ONE shared
# kit runtime through nginx's token proxy with a token of its own, made by the hub.
#
#   sudo /opt/local-llm-lab/.venv/bin/jupyterhub -f /opt/local-llm-lab/deploy/jupyterhub/jupyterhub_config.py
#
# The settings below come from LABKIT_HUB_* variables (labkit-hub.service sets them):
#   LABKIT_HUB_RUNTIME_URL  the token proxy, e.g. https://llm.example.org (deploy/nginx/labkit.conf)
#   LABKIT_HUB_CA_BUNDLE    the CA of its certificate, if learners' machines would not trust it
#   LABKIT_HUB_COURSE       the release to hand out: a folder or a git address
#   LABKIT_HUB_STATE        the hub's own files: database, cookie secret, tokens (/var/lib/labkit-hub)
#   LABKIT_HUB_TOKEN_MAP    nginx's token map, written by the hub (/etc/nginx/labkit-tokens.map)
#   LABKIT_HUB_RELOAD       how to reload nginx ("nginx -s reload")
#   LABKIT_HUB_GROUP        who may log in (learners); LABKIT_HUB_ADMINS: instructors, by comma
#   LABKIT_HUB_BIND_URL     where the hub listens (http://127.0.0.1:8000, behind your TLS)

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labkit_hub  # beside this file

c = get_config()  # noqa: F821  (JupyterHub defines it)
settings = labkit_hub.HubSettings.from_env()
settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
labkit_hub.check_reachable(settings.venv)  # learners' servers run its Python as themselves

# --- the hub itself --------------------------------------------------------------------------
c.JupyterHub.bind_url = os.environ.get("LABKIT_HUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.db_url = f"sqlite:///{settings.state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(settings.state_dir / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(settings.state_dir / "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.command = [labkit_hub.find_http_proxy(settings.venv)]

# --- who logs in -----------------------------------------------------------------------------
# System users and their passwords (PAM). Add a learner: useradd + passwd (README.md).
c.JupyterHub.authenticator_class = "jupyterhub.auth.PAMAuthenticator"
c.LocalAuthenticator.allowed_groups = {os.environ.get("LABKIT_HUB_GROUP", "learners")}
c.Authenticator.admin_users = {
    name.strip() for name in os.environ.get("LABKIT_HUB_ADMINS", "").split(",") if name.strip()
}
# Servers run under the hub's service; a PAM session per server adds nothing here and fails
# in containers.
c.PAMAuthenticator.open_sessions = False

# --- each learner's server -------------------------------------------------------------------
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"  # runs as the learner
c.Spawner.cmd = [str(settings.venv / "bin" / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab/tree/course/notebooks/00-check-your-setup.ipynb"
c.Spawner.env_keep = ["LANG", "LC_ALL"]  # PATH and the rest come from the hook below
# Token, token map, course copy and environment: labkit_hub.py.
c.Spawner.pre_spawn_hook = labkit_hub.spawn_hook(settings)
# A loaded class server starts a Python server slowly; give it time before calling it failed.
c.Spawner.http_timeout = 90
c.Spawner.start_timeout = 120

# --- the instructor's tools ------------------------------------------------------------------
# An API token for `labkit collect --hub` and scripts, kept in STATE/instructor-api-token
# (root only): export JUPYTERHUB_API_TOKEN=$(sudo cat /var/lib/labkit-hub/instructor-api-token)
c.JupyterHub.services = [
    {"name": "instructor-tools", "api_token": labkit_hub.service_token(settings.state_dir)}
]
c.JupyterHub.load_roles = [
    {
        "name": "instructor-tools",
        "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "tokens"],
        "services": ["instructor-tools"],
    }
]
