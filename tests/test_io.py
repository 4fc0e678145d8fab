import json

import pytest

from tokenskip.io import DataError, ResumableJsonl, read_jsonl, write_json_atomic


def test_resume_keeps_rows_and_refuses_duplicates(tmp_path):
    p = tmp_path / "predictions.jsonl"
    with ResumableJsonl(p, {"a": 1}) as w:
        w.append({"id": "x", "v": 1})
        w.append({"id": "y", "v": 2})
        with pytest.raises(ValueError, match="duplicate"):
            w.append({"id": "x", "v": 3})
    with ResumableJsonl(p, {"a": 1}) as w:
        assert w.done_keys == {"x", "y"}
        w.append({"id": "z", "v": 3})
    assert [r["id"] for r in read_jsonl(p)] == ["x", "y", "z"]


def test_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / "predictions.jsonl"
    with ResumableJsonl(p, {"a": 1}) as w:
        w.append({"id": "x"})
    with p.open("a") as f:
        f.write('{"id": "y", "v"')  # killed mid-write
    with ResumableJsonl(p, {"a": 1}) as w:
        assert w.done_keys == {"x"}
        w.append({"id": "y"})
    assert [r["id"] for r in read_jsonl(p)] == ["x", "y"]


def test_changed_settings_move_old_rows_aside(tmp_path):
    p = tmp_path / "predictions.jsonl"
    with ResumableJsonl(p, {"max_new_tokens": 10}) as w:
        w.append({"id": "x"})
    with ResumableJsonl(p, {"max_new_tokens": 20}) as w:
        assert w.done_keys == set()
    assert (tmp_path / "predictions.stale").exists()
    assert read_jsonl(p) == []


def test_read_jsonl_error_names_line(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"f.jsonl, line 3: expected a JSON object"):
        read_jsonl(p)


def test_atomic_json(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2]}
    assert list(tmp_path.iterdir()) == [tmp_path / "m.json"]
