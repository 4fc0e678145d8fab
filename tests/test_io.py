import json
import os
import stat

import pytest

from tokenskip.contract.io import (
    DataError,
    ResumableJsonl,
    finite_or_none,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)


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


@pytest.mark.parametrize("bad,byte", [(b"\xe9", "0xe9"), (b"caf\xe9", "0xe9"), (b"\xff\xfe", "0xff")])
def test_non_utf8_line_names_file_and_line(tmp_path, bad, byte):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"question": "ok", "answer": "#### 1"}\n{"question": "' + bad + b'", "answer": "#### 2"}\n')
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert e.value.line == 2 and str(p) in str(e.value)
    assert f"not UTF-8 text: byte {byte}" in str(e.value)


def test_non_utf8_json_file_and_utf8_bom(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(b'{\n"a": "\xe9"\n}\n')
    with pytest.raises(DataError, match=r"m\.json, line 2: not UTF-8 text: byte 0xe9 at column 7"):
        read_json(p)
    q = tmp_path / "bom.jsonl"
    q.write_bytes(b'\xef\xbb\xbf{"id": 1}\n')  # a BOM (Windows editors) is not an error
    assert read_jsonl(q) == [{"id": 1}]


def test_json_writers_never_write_nan(tmp_path):
    with pytest.raises(ValueError, match=r"s\.json: field 'ratios\.0\.5\.mean' is NaN or infinite"):
        write_json_atomic(tmp_path / "s.json", {"ratios": {"0.5": {"n": 0, "mean": float("nan")}}})
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(ValueError, match=r"r\.jsonl: field 'loss'"):
        write_jsonl_atomic(tmp_path / "r.jsonl", [{"loss": 1.0}, {"loss": float("inf")}])
    with ResumableJsonl(tmp_path / "p.jsonl", {}) as w, pytest.raises(ValueError, match="field 'x'"):
        w.append({"id": "a", "x": float("-inf")})
    assert read_jsonl(tmp_path / "p.jsonl") == []
    assert [finite_or_none(v) for v in (float("nan"), float("inf"), 0.5, 3, None)] == [None, None, 0.5, 3, None]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    # issue 26 item 9: files written atomically were 0600 (mkstemp) while the same files appended to were 0644
    from tokenskip.contract.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"n": 1})
        write_jsonl_atomic(tmp_path / "rows.jsonl", [{"id": "a"}])
        write_text_atomic(tmp_path / "report.md", "x")
        with open(tmp_path / "appended.jsonl", "w") as f:   # what a plain open gives, the reference
            f.write("{}\n")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["metrics.json", "rows.jsonl", "report.md", "appended.jsonl"], mode)
    # the folders published by rename (merged models, converted models, scaled adapters): mkdir's mode
    from tokenskip.contract.io import temp_dir_beside

    old = os.umask(umask)
    try:
        folder = temp_dir_beside(tmp_path / "sub" / "model")
    finally:
        os.umask(old)
    assert folder.parent == tmp_path / "sub" and folder.name.startswith(".model.") and not any(folder.iterdir())
    assert stat.S_IMODE(folder.stat().st_mode) == mode | 0o111 & ~umask
