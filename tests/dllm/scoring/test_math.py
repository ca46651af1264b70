"""Math answers on hand cases: equivalent forms judged equal, near-misses judged wrong."""

import pytest

from t3d.dllm.scoring import ExactScorer, MathScorer, Reference
from t3d.dllm.scoring.math_answers import judge_exact, judge_math, stated_answer

EQUIVALENT = [
    ("The answer is \\boxed{\\dfrac12}.", "\\frac{1}{2}"),  # \dfrac, unbraced arguments
    ("#### x = 3", "3"),  # an assignment
    ("so \\boxed{50\\%}", "0.5"),  # a percentage against a decimal
    ("\\boxed{50\\%}", "50"),  # ... and against the integer GSM8K writes (math-verify's leniency)
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"),  # LaTeX forms of one number
    ("#### 1,000", "1000"),  # thousands separator
    ("#### $1000.", "1000"),  # currency sign and final period
    ("#### 18.0", "18"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),  # fraction against decimal
    ("#### 3/4", "\\boxed{0.75}"),  # boxed reference, marker response
    ("She earns \\boxed{18} dollars.", "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18"),  # GSM8K solution
    ("I get 5, then 7.", "7"),  # no marker or box: math-verify reads the last expression
    ("\\boxed{(x+1)^2}", "x^2 + 2x + 1"),  # symbolic equality
    ("#### Paris.", "paris"),  # text answers: normalised text
]

NEAR_MISSES = [
    ("\\boxed{\\frac{1}{3}}", "0.33"),  # close is not equal
    ("\\boxed{5\\%}", "0.5"),  # 5% is 0.05
    ("\\boxed{0.5\\%}", "0.5"),
    ("\\boxed{\\sqrt{2}}", "2"),
    ("#### -3", "3"),
    ("#### 100", "1000"),
    ("#### 12.5", "12"),
    ("\\boxed{(x+1)^2}", "x^2 + 1"),
    ("#### 17", "#### 18"),
    ("\\boxed{3} wait, the answer is \\boxed{4}", "3"),  # the last box counts
    ("#### Lyon", "paris"),
    ("nothing to see", "18"),
]


@pytest.mark.parametrize("response, reference", EQUIVALENT)
def test_equivalent_answers_are_judged_equal(response, reference):
    verdict = MathScorer().score(Reference(answer=reference), response)
    assert verdict.correct is True, verdict.detail


@pytest.mark.parametrize("response, reference", NEAR_MISSES)
def test_near_misses_are_judged_wrong(response, reference):
    verdict = MathScorer().score(Reference(answer=reference), response)
    assert verdict.correct is False, verdict.detail


def test_percentage_equals_its_fraction_and_its_integer_only():
    """math-verify reads 50\\% as 50/100: equal to 0.5 and 1/2, and (leniently) to 50, never to 5 or 0.05."""
    assert [judge_math("\\boxed{50\\%}", ref).correct for ref in ("0.5", "\\frac{1}{2}", "50", "5", "0.05")] == [
        True, True, True, False, False,
    ]  # fmt: skip


def test_detail_names_the_parsed_answers():
    detail = judge_math("so \\boxed{\\dfrac12}", "#### 0.5").detail
    assert detail["extracted"] == "\\dfrac12" and detail["reference"] == "0.5"
    assert detail["parsed"] == ["1/2", "\\frac{1}{2}"] and detail["reference_parsed"]
    assert detail["method"] == "math-verify"


def test_words_are_text_not_products_of_variables():
    assert judge_math("#### Paris.", "paris").correct
    assert not judge_math("#### pairs", "paris").correct  # p*a*i*r*s == p*a*r*i*s without the \\text{} wrapping
    assert judge_math("#### 18 dollars", "18").correct


def test_equal_text_is_equal_even_where_math_verify_cannot_parse_it():
    verdict = judge_math("#### Mr. O'Neil", "mr. o'neil")
    assert verdict.correct and verdict.detail["method"] == "text"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 12\nThen a distractor 99", "12"),  # the marker wins over a later number
        ("first #### 5 then #### 1,234", "1,234"),  # the last marker wins
        ("The answer is $\\boxed{42}$.", "42"),
        ("\\boxed{1} no, \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # last box, nested braces kept
        ("so x = \\boxed{x^{2} + 1}", "x^{2} + 1"),
        ("I get 5, then 7.", None),  # no marker, no box
    ],
)
def test_stated_answer(text, expected):
    assert stated_answer(text) == expected


def test_exact_scorer_compares_normalised_text_only():
    assert judge_exact("#### The Eiffel Tower.", "the eiffel tower").correct
    assert not judge_exact("\\boxed{\\dfrac12}", "\\frac{1}{2}").correct  # no maths in `exact`
    assert ExactScorer().score(Reference(), "42").correct is None  # nothing to judge by
