"""Answer extractors (latentmas.eval.extract): numbers, letters, code."""
from __future__ import annotations

from fractions import Fraction

import pytest

from latentmas.eval.extract import (
    boxed_contents,
    extract_choice,
    extract_code,
    extract_number,
    format_number,
    last_boxed,
    numbers_equal,
    parse_number,
)

# ------------------------------------------------------------------------------------------------------ \boxed


def test_boxed_nested_braces_and_last_wins():
    text = r"first \boxed{1} then \boxed{\frac{3}{4}} and finally \boxed{x^{2} + \left\{ 1 \right\}}"
    assert boxed_contents(text) == ["1", r"\frac{3}{4}", r"x^{2} + \left\{ 1 \right\}"]
    assert last_boxed(text) == r"x^{2} + \left\{ 1 \right\}"


def test_unterminated_box_is_skipped():
    assert last_boxed(r"\boxed{12} so the answer is \boxed{13") == "12"
    assert last_boxed("no box here") is None


def test_fbox_and_braceless_box():
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so \boxed 42 done") == "42"


# ------------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", "72"),
        ("72.0", "72"),
        ("$72", "72"),
        (r"\boxed{72}", "72"),
        ("1,234", "1234"),
        ("The total is $1,234.00.", "1234"),
        (r"\boxed{\$72}", "72"),
        (r"\boxed{\$1,234.00}", "1234"),
        (r"\boxed{1{,}234}", "1234"),  # LaTeX digit grouping
        (r"a total of 1\,234 dollars", "1234"),
        (r"\boxed{\frac{3}{4}}", "0.75"),
        (r"\boxed{-\dfrac{1}{3}}", "-1/3"),
        (r"\boxed{-5}", "-5"),
        ("He lost 3 and ended at -10", "-10"),
        ("3-5", "5"),  # subtraction, not a negative number
        ("- 5 apples", "5"),  # a bullet, not a sign
        (r"\boxed{18 \text{ dollars}}", "18"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{50\%}", "50"),
        (r"\boxed{\boxed{7}}", "7"),
        ("#### 1,234", "1234"),
        ("It costs 0.5", "0.5"),
        ("step1 only", None),
        ("no numbers at all", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_box_beats_phrase_beats_last_number():
    assert extract_number(r"The answer is 5. Actually \boxed{6}. Then 7 more words 8") == "6"
    assert extract_number("The answer is 18 dollars. Check: 9*2=18, 3 times 6") == "18"
    assert extract_number("Final answer: 42\n(we used 3 steps)") == "42"
    assert extract_number("we get 3, then 4, then 11") == "11"


def test_non_numeric_last_box_falls_through():
    assert extract_number(r"\boxed{\text{none}} but the count is 4") == "4"


def test_parse_number_and_equality():
    assert parse_number("72") == Fraction(72)
    assert parse_number("$1,234.00") == Fraction(1234)
    assert parse_number(r"\frac{3}{4}") == Fraction(3, 4)
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("-0.25") == Fraction(-1, 4)
    assert parse_number("1,2345") is None  # not a thousands grouping
    assert parse_number("abc") is None
    assert parse_number(r"\frac{1}{0}") is None
    assert numbers_equal("72", "72.0")
    assert numbers_equal(r"\frac{3}{4}", "0.75")
    assert numbers_equal("$1,234", "1234.00")
    assert not numbers_equal("72", "27")
    assert not numbers_equal(None, "1")
    assert not numbers_equal("x", "x")


def test_format_number_is_exact():
    assert format_number(Fraction(5, 8)) == "0.625"
    assert format_number(Fraction(-3, 4)) == "-0.75"
    assert format_number(Fraction(1, 3)) == "1/3"
    assert format_number(Fraction(1, 1024)) == "0.0009765625"


# ------------------------------------------------------------------------------------------------------ letters

CHOICES = ["Hemolytic uremic syndrome", "Oral ulcers", "Colorectal cancer", "Pancreatic cancer"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{C}", "C"),
        (r"\boxed{\text{(C)}}", "C"),
        (r"\boxed{C) Colorectal cancer}", "C"),
        (r"\boxed{c}", "C"),
        ("The answer is (B).", "B"),
        ("the answer is B because", "B"),
        ("Answer: D", "D"),
        ("**Answer:** C", "C"),
        ("**Answer**: (A)", "A"),
        ("The correct option is B, since", "B"),
        ("C", "C"),
        ("(B)", "B"),
        ("**D**", "D"),
        ("lots of reasoning\n\nB.", "B"),
        (r"\boxed{Colorectal cancer}", "C"),  # exact option text inside the box
        ("the answer is a fever", None),  # article, not a letter
        (r"\boxed{E}", None),  # out of range for 4 choices
        ("Final answer: E", None),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, 4, CHOICES) == expected


def test_out_of_range_box_falls_through_to_phrase():
    assert extract_choice(r"\boxed{E} hmm, the answer is B", 4) == "B"
    assert extract_choice(r"\boxed{E}", 5) == "E"
    assert extract_choice("Answer: C", 3) == "C"
    assert extract_choice("Answer: D", 3) is None


def test_last_phrase_wins():
    assert extract_choice("Answer: A ... on reflection the answer is (C)", 4) == "C"


# ------------------------------------------------------------------------------------------------------ code


def test_code_last_python_block_wins_over_other_blocks():
    text = "Plan\n```python\ndef f():\n    return 1\n```\nbetter:\n```python\ndef f():\n    return 2\n```\n```\nf()\n```"
    assert extract_code(text) == "def f():\n    return 2\n"


def test_code_plain_fence_and_unterminated_block():
    assert extract_code("```\ndef g(x):\n    return x\n```") == "def g(x):\n    return x\n"
    assert extract_code("```python\ndef g(x):\n    return x") == "def g(x):\n    return x\n"
    assert extract_code("```python\ndef g(x):\n    return x```") == "def g(x):\n    return x\n"


def test_code_bare_text_only_if_it_looks_like_code():
    assert extract_code("import math\ndef h():\n    return math.pi") == "import math\ndef h():\n    return math.pi\n"
    assert extract_code("I would loop over the list and return the max.") is None
    assert extract_code(None) is None
    assert extract_code("```python\n\n```") is None
