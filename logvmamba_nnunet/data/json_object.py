"""Reading a JSON file that must hold an object (plans, dataset.json, nnU-Net's summary.json)."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: str | Path) -> dict:
    """The JSON object in ``path`` as a dict; ValueError naming the file when it does not exist, is not valid JSON
    or holds another JSON value (a list, a number)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value
