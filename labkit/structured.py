"""Turn a model's reply into data you can trust: parse the JSON, check it against a schema.

Constrained decoding (``format=`` in ``Client.chat``) makes valid output likely, not certain:
the reply can still be cut off at ``max_tokens``. So check before you use it::

    person = validate(reply, {"type": "object", "required": ["name"], ...})

A failure raises ``InvalidModelOutput`` whose ``.raw`` keeps the model's text for a look.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from labkit.errors import InvalidInput, InvalidModelOutput

__all__ = [
    "HasText",
    "Schema",
    "check_schema",
    "parse_json",
    "validate",
]

Schema = Mapping[str, Any]


class HasText(Protocol):
    """Anything with the model's text on it, such as a ``Reply``."""

    @property
    def text(self) -> str: ...


# Small models like to wrap JSON in a Markdown code fence even when asked not to.
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def check_schema(schema: Schema) -> None:
    """Raise InvalidInput if ``schema`` is not a valid JSON Schema."""
    if not isinstance(schema, Mapping):
        raise InvalidInput(f"A JSON schema must be a dict, not {type(schema).__name__}.")
    import jsonschema  # imported when first needed: it takes a second or more to load

    validator = jsonschema.validators.validator_for(schema)
    try:
        validator.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise InvalidInput(
            f"The JSON schema itself is invalid at {_where(exc.absolute_path)}: {exc.message}"
        ) from exc


def parse_json(text: str) -> Any:
    """Parse the model's text as JSON (a surrounding Markdown code fence is allowed)."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        # Running out of text mid-value is the mark of a reply stopped by max_tokens.
        ended_early = exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated")
        hint = " (it looks cut off: raise max_tokens)" if ended_early else ""
        raise InvalidModelOutput(
            f"The model's reply is not valid JSON{hint}: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}. Reply starts: {body[:80]!r}",
            raw=text,
        ) from exc


def validate(reply_or_text: HasText | str, schema: Schema | None = None) -> Any:
    """The reply parsed as JSON and checked against ``schema``; raises InvalidModelOutput."""
    text = reply_or_text if isinstance(reply_or_text, str) else reply_or_text.text
    value = parse_json(text)
    if schema is None:
        return value
    check_schema(schema)
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    errors = list(validator_class(schema).iter_errors(value))
    if errors:
        worst = jsonschema.exceptions.best_match(errors)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise InvalidModelOutput(
            f"The model's JSON does not match the schema at {_where(worst.absolute_path)}: "
            f"{worst.message}{more}",
            raw=text,
        )
    return value


def _where(path: Any) -> str:
    """A JSON path such as ``$.people[0].age`` for an error location."""
    where = "$"
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where if where != "$" else "the top level ($)"
