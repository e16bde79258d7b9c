"""read_json_object: the object in a JSON file, or a ValueError naming the file and the problem."""

import json

import pytest

from logvmamba_nnunet.data.json_object import read_json_object


def test_reads_an_object(tmp_path):
    value = {"a": [1, 2.5], "b": {"c": None}}
    (tmp_path / "x.json").write_text(json.dumps(value))
    assert read_json_object(tmp_path / "x.json") == value


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object"),
    (b"\xff\xfe", "is not valid JSON")])
def test_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "x.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_json_object(path)
    assert str(path) in str(error.value)
