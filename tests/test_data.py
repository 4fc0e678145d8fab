import json

import pytest

from conftest import GSM8K_TEST, MATH500_TEST, need_data
from tokenskip.contract.io import DataError
from tokenskip.task.data import last_boxed, load_jsonl_mapped, load_problems


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_gsm8k_loader_strips_calculator_notes_and_commas(tmp_path):
    p = write(tmp_path, [{"question": "Q?", "answer": "5 * 2 = <<5*2=10>>10 dollars.\nSo 1,000 + 10.\n#### 1,010"}])
    (pb,) = load_problems("gsm8k", str(p))
    assert pb.answer == "1010"
    assert pb.solution == "5 * 2 = 10 dollars.\nSo 1,000 + 10."
    assert pb.id == "gsm8k/d/0"


def test_real_gsm8k_and_math500_slices():
    probs = load_problems("gsm8k", str(need_data(GSM8K_TEST)), limit=3, offset=2)
    assert [p.id for p in probs] == ["gsm8k/test/2", "gsm8k/test/3", "gsm8k/test/4"]
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in probs)
    m = load_problems("math500", str(need_data(MATH500_TEST)), limit=2)
    assert m[0].id == "test/precalculus/807.json"
    assert m[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert m[0].meta == {"level": 2, "type": "Precalculus"}
    assert len(load_problems("math", str(MATH500_TEST))) == 500


def test_hendrycks_math_gold_is_last_boxed_with_nested_braces(tmp_path):
    p = write(tmp_path, [{"problem": "P", "solution": "first \\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}}."}])
    (pb,) = load_problems("math", str(p))
    assert pb.answer == "\\frac{1}{\\sqrt{2}}"


@pytest.mark.parametrize("rows,line,field", [
    ([{"question": "q", "answer": "#### 1"}, {"answer": "#### 2"}], 2, "question"),
    ([{"question": "q", "answer": "no marker"}], 1, "answer"),
    ([{"question": "q", "answer": "#### 1"}, "{not json"], 2, None),
    ([{"question": ["list"], "answer": "#### 1"}], 1, "question"),
])
def test_gsm8k_malformed_rows_name_file_line_field(tmp_path, rows, line, field):
    p = write(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_problems("gsm8k", str(p))
    assert e.value.line == line and e.value.field == field
    assert str(p) in str(e.value) and f"line {line}" in str(e.value)


def test_math_row_without_answer_or_boxed_is_an_error(tmp_path):
    p = write(tmp_path, [{"problem": "P", "solution": "no box"}])
    with pytest.raises(DataError, match="line 1.*solution"):
        load_problems("math", str(p))


def test_mapped_loader_and_errors(tmp_path):
    p = write(tmp_path, [{"q": "a", "sol": "x \\boxed{7}", "k": 9}])
    (pb,) = load_jsonl_mapped(p, question="q", answer="sol", id_field="k", answer_from="boxed")
    assert (pb.id, pb.answer, pb.solution) == ("9", "7", "x \\boxed{7}")
    with pytest.raises(DataError, match="field 'missing'"):
        load_jsonl_mapped(p, question="missing", answer="sol")


def test_unknown_benchmark_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_problems("mmlu", "x")
    with pytest.raises(FileNotFoundError):
        load_problems("gsm8k", str(tmp_path / "nope.jsonl"))


def test_last_boxed():
    assert last_boxed("a \\boxed{2} b \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("no answer") is None
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize("bench,rows,line,field", [
    ("gsm8k", [{"question": "q", "answer": "#### 1"}, {"question": "", "answer": "#### 2"}], 2, "question"),
    ("gsm8k", [{"question": "   \n", "answer": "#### 2"}], 1, "question"),
    ("math", [{"problem": "P", "answer": "1"}, {"problem": "", "answer": "2"}], 2, "problem"),
    ("math", [{"problem": "P", "answer": " "}], 1, "answer"),
])
def test_empty_question_or_answer_is_rejected(tmp_path, bench, rows, line, field):
    p = write(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_problems(bench, str(p))
    assert (e.value.line, e.value.field) == (line, field)
    assert f"{p}, line {line}: field '{field}': empty" in str(e.value)


def test_mapped_loader_rejects_empty_question(tmp_path):
    p = write(tmp_path, [{"q": "a", "a": "1"}, {"q": "", "a": "2"}])
    with pytest.raises(DataError, match=r"line 2: field 'q': empty"):
        load_jsonl_mapped(p, question="q", answer="a")


def test_latin1_byte_in_a_dataset_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"question": "q", "answer": "#### 1"}\n\n{"question": "caf\xe9?", "answer": "#### 2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 3: not UTF-8 text: byte 0xe9"):
        load_problems("gsm8k", str(p))
