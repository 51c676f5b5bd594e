"""The model picker: a dropdown of the runtime's chat models that sets ``client.model``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w

from labkit import discovery
from labkit.client import Client
from labkit.course.display import Displayed, notice
from labkit.errors import LabkitError, RuntimeUnavailable
from labkit.reply import Timeout

__all__ = [
    "UNAVAILABLE",
    "ModelPicker",
    "chat_models",
    "connect",
    "largest",
    "model_picker",
    "parameters",
]

UNAVAILABLE = "AI unavailable — run `labkit up` in a terminal, then try again."

# "7b", "1.5B", "135m", "8x7b" as a separate part of a model name (not "q4_k_m" or "v1").
_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def parameters(name: str) -> float | None:
    """The parameter count a model's name states ("qwen2.5:7b" → 7e9), or None if it does not."""
    sizes = []
    for experts, size, unit in _SIZE.findall(name):
        count = float(size) * (1e9 if unit.lower() == "b" else 1e6)
        sizes.append(count * (int(experts) if experts else 1))
    return max(sizes) if sizes else None


def largest(names: Sequence[str], current: str | None = None) -> str | None:
    """The model whose name states the most parameters, if more than ``current``'s."""
    # A name without a size ("llama3:latest") may be big: it is never replaced by a guess.
    sized = [(size, name) for name in names if (size := parameters(name)) is not None]
    if not sized:
        return current
    size, biggest = max(sized)
    if current is None:
        return biggest
    own = parameters(current)
    return biggest if own is not None and size > own else current


def connect() -> Client:
    """A client for the runtime labkit finds; raises RuntimeUnavailable rather than start one."""
    # A widget must not start a runtime behind the learner's back: it says how to start one.
    found = discovery.find_runtime(start=False)
    return Client(
        found.url,
        dialect=found.dialect,
        model=found.chat_model or None,
        embed_model=found.embed_model or None,
    )


def chat_models(client: Client) -> list[str]:
    """The runtime's models that can chat (embedding models left out)."""
    names = client.models(timeout=Timeout(connect=3.0, read=10.0))
    chat = [name for name in names if not discovery._is_embedding(name)]
    return chat or names


class ModelPicker(Displayed):
    """A dropdown of the runtime's chat models; choosing one sets ``client.model``.

    With ``prefer_largest`` it starts on the biggest chat model the runtime lists (by the size
    in its name) rather than the client's: what a design coach wants when the runtime has one.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        description: str = "Model",
        prefer_largest: bool = False,
    ) -> None:
        self.client = client
        self.prefer_largest = prefer_largest
        self.problem = ""  # why the last refresh found no runtime ("" if it did)
        self.dropdown = w.Dropdown(description=description, options=[])
        self.message = w.HTML()
        self.refresh_button = w.Button(
            description="↻",
            tooltip="List the models again",
            layout={"width": "3em", "flex": "0 0 auto"},
        )
        self.refresh_button.on_click(lambda _: self.refresh())
        self.dropdown.observe(self._chosen, names="value")
        self.widget = w.HBox([self.dropdown, self.refresh_button, self.message])
        self.refresh()

    @property
    def value(self) -> str | None:
        """The chosen model (None while no runtime answers)."""
        value = self.dropdown.value
        return value if isinstance(value, str) else None

    def bind(self, client: Client | None) -> bool:
        """Use another client (the dropdown is listed again); True if its runtime answered."""
        self.client = client
        return self.refresh()

    def refresh(self) -> bool:
        """List the models again; True if the runtime answered."""
        try:
            if self.client is None:
                self.client = connect()
            # A quick probe first: listing models is retried, which is slow when nothing runs.
            health = self.client.health()
            if not health.up:
                raise RuntimeUnavailable(health.detail)
            names = chat_models(self.client)
        except LabkitError as exc:
            self.dropdown.options, self.dropdown.disabled = [], True
            self.problem = str(exc)
            self.message.value = notice(UNAVAILABLE)
            self.message.tooltip = self.problem  # the details, on hover
            return False
        self.problem = self.message.tooltip = ""
        client = self.client
        listed = [name for name in names if name in (client.model, f"{client.model}:latest")]
        current = listed[0] if listed else (names[0] if names else None)
        if self.prefer_largest and names:
            current = largest(names, current)
        self.dropdown.options, self.dropdown.disabled = names, not names
        self.dropdown.value = current
        self.message.value = "" if names else notice("The runtime lists no chat models.")
        client.model = current
        return True

    def _chosen(self, change: Mapping[str, Any]) -> None:
        if self.client is not None and isinstance(change["new"], str):
            self.client.model = change["new"]


def model_picker(client: Client | None = None) -> ModelPicker:
    """A dropdown of the runtime's chat models, starting at the client's; it sets client.model."""
    return ModelPicker(client)
