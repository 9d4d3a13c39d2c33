"""Answer extraction: from a model's final text to a comparable answer.

Three families, one function each, all pure and regex-based (no model, no sandbox):

* numbers (:func:`extract_number`): the last complete ``\\boxed{...}`` wins (braces may nest), else the number after
  the last "final answer" / "answer is" / "answer:" phrase, else the last number in the text. Numbers are compared
  exactly as fractions (:func:`parse_number`), so ``72``, ``72.0``, ``$72``, ``1,234``, ``\\$1,234.00`` and
  ``\\frac{3}{4}`` vs ``0.75`` all compare the way a person would expect.
* letters (:func:`extract_choice`): ``\\boxed{C}``, "answer is (C)", "Answer: C", a reply that is only a letter, or a
  boxed option text; only letters that exist for the question (A.. up to its number of choices) are ever returned.
* code (:func:`extract_code`): the last fenced ```python block (else the last fenced block), else the whole reply
  if it looks like Python.

Each extractor returns ``None`` when it finds nothing; scoring turns that into reason ``no_answer``.
"""
from __future__ import annotations

import re
import string
from fractions import Fraction

__all__ = [
    "boxed_contents",
    "last_boxed",
    "parse_number",
    "format_number",
    "numbers_equal",
    "extract_number",
    "extract_choice",
    "extract_code",
    "letters_for",
]

# ---------------------------------------------------------------------------------------------------------------
# \boxed{...}
# ---------------------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def boxed_contents(text: str) -> list[str]:
    """Contents of every *complete* ``\\boxed{...}`` (or ``\\fbox{...}``) in order, with nested braces balanced.

    An unterminated box (a reply cut off by the token limit) is skipped, so an earlier complete box still counts.
    ``\\boxed 5`` (no braces, a TeX-legal form) yields the single following token.
    """
    out: list[str] = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                c = text[j]
                if c == "\\":  # an escaped character (\{, \}, \$ ...) never opens or closes a group
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        out.append(text[i + 1 : j])
                        break
                j += 1
        else:
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                out.append(tok.group(0))
    return out


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}``, or ``None``."""
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else None


# ---------------------------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------------------------

# A plain number: optional sign (not when glued to a preceding word/digit, so "3-5" is 3 and 5), thousands groups
# of exactly three digits, optional decimals.
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUM_RE = re.compile(rf"(?<![\w.)\]}}])(?P<sign>[-−–]?)(?P<num>{_NUM})")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(?P<a>[^{}]+?)\s*\}\s*\{\s*(?P<b>[^{}]+?)\s*\}")


def _unlatex_digits(s: str) -> str:
    """LaTeX digit grouping to plain text: ``1{,}234`` -> ``1,234``, ``1\\,234`` / ``1\\!234`` -> ``1234``."""
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", ",", s)
    return re.sub(r"(?<=\d)\\[,!; ](?=\d{3})", "", s)


def _clean_number_text(s: str) -> str:
    s = _unlatex_digits(s.strip())
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[,;:! ]", "", s)
    s = re.sub(r"\\(?:left|right|displaystyle)\b", "", s)
    s = s.replace("−", "-").replace("–", "-")
    s = s.strip().rstrip(".").strip()
    return s


def parse_number(s: str | None) -> Fraction | None:
    """Parse one number written the usual ways; ``None`` if ``s`` is not (only) a number.

    Accepts ``72``, ``-3``, ``72.0``, ``$1,234.00``, ``\\$72``, ``50\\%``, ``1{,}234``, ``\\frac{3}{4}``,
    ``-\\dfrac{1}{2}``, ``3/4``. Text around the number (``18 \\text{ dollars}``) makes it *not* a number here;
    :func:`extract_number` handles that by taking the last number inside a box.
    """
    if s is None:
        return None
    t = _clean_number_text(str(s))
    if not t:
        return None
    neg = False
    if t[0] in "-+":
        neg = t[0] == "-"
        t = t[1:].strip()
    m = _FRAC_RE.fullmatch(t)
    if m:
        a, b = parse_number(m.group("a")), parse_number(m.group("b"))
        if a is None or b is None or b == 0:
            return None
        v = a / b
        return -v if neg else v
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", t)
    if m:
        b = Fraction(m.group(2))
        if b == 0:
            return None
        v = Fraction(m.group(1)) / b
        return -v if neg else v
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+", t):
        v = Fraction(t.replace(",", "").rstrip("."))
        return -v if neg else v
    return None


def format_number(v: Fraction) -> str:
    """Canonical text of a number: ``72``, ``-3``, ``0.75``; a non-terminating fraction stays ``p/q``."""
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{v.numerator}/{v.denominator}"
    # exact decimal expansion (the denominator has only factors 2 and 5), no float round-off
    q, r = divmod(abs(v.numerator), v.denominator)
    digits = []
    while r:
        r *= 10
        digits.append(str(r // v.denominator))
        r %= v.denominator
    return f"{'-' if v < 0 else ''}{q}.{''.join(digits)}"


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact numeric equality of two answer strings (``False`` if either does not parse)."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and x == y


def _numbers_in(text: str) -> list[Fraction]:
    """All numbers in free text, in order (LaTeX fractions included)."""
    text = _unlatex_digits(text)
    found: list[tuple[int, Fraction]] = []
    spans: list[tuple[int, int]] = []
    for m in _FRAC_RE.finditer(text):
        v = parse_number(m.group(0))
        if v is not None:
            start = m.start()
            pre = text[max(0, start - 1):start]
            if pre in "-−" and pre:
                v = -v
            found.append((start, v))
            spans.append((m.start(), m.end()))
    for m in _NUM_RE.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        v = Fraction(m.group("num").replace(",", ""))
        if m.group("sign"):
            v = -v
        found.append((m.start(), v))
    found.sort(key=lambda t: t[0])
    return [v for _, v in found]


_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer\s+is|answer\s+is|answer\s*[:：]|answer\s*=|####)", re.IGNORECASE
)


def _number_from_box(content: str) -> Fraction | None:
    v = parse_number(content)
    if v is not None:
        return v
    nums = _numbers_in(content)
    return nums[-1] if nums else None


def extract_number(text: str | None) -> str | None:
    """The final numeric answer of a reply, in canonical form (see :func:`format_number`), or ``None``.

    Rules, first that applies wins:

    1. the last complete ``\\boxed{}``: its content as one number, else the last number inside it
       (``\\boxed{x = 5}`` -> 5, ``\\boxed{18 \\text{ dollars}}`` -> 18); a box with no number falls through;
    2. the first number after the last "final answer" / "answer is" / "answer:" / "####" phrase (same line or the
       next);
    3. the last number anywhere in the reply.
    """
    if not text:
        return None
    for content in reversed(boxed_contents(text)):
        v = _number_from_box(content)
        if v is not None:
            return format_number(v)
        break  # only the last box counts; a non-numeric last box falls through to the phrase rules
    phrases = list(_ANSWER_PHRASE.finditer(text))
    for m in reversed(phrases):
        tail = text[m.end():]
        window = "\n".join(tail.lstrip().split("\n")[:2])[:200]
        nums = _numbers_in(window)
        if nums:
            return format_number(nums[0])
    nums = _numbers_in(text)
    return format_number(nums[-1]) if nums else None


# ---------------------------------------------------------------------------------------------------------------
# multiple choice
# ---------------------------------------------------------------------------------------------------------------


def letters_for(n_choices: int) -> str:
    """``"ABCD"`` for 4 choices, and so on (at most 26)."""
    if not 1 <= n_choices <= 26:
        raise ValueError(f"number of choices must be 1..26, got {n_choices}")
    return string.ascii_uppercase[:n_choices]


def _letter_in_box(content: str, valid: str, choices: list[str] | None) -> str | None:
    c = re.sub(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}", r"\1", content).strip()
    c = c.strip("$ *")
    m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\].:]?(?:\s+.*|\s*)", c, flags=re.DOTALL)
    if m and m.group(1).upper() in valid:
        letter = m.group(1).upper()
        # a lone lowercase letter is accepted inside a box only when it is alone
        if m.group(1).islower() and c.strip("()[]. ").lower() != m.group(1):
            return None
        return letter
    if choices:
        norm = _norm_option(c)
        hits = [valid[i] for i, ch in enumerate(choices[: len(valid)]) if _norm_option(ch) == norm]
        if len(hits) == 1:
            return hits[0]
    return None


def _norm_option(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().strip(".").casefold()


_CHOICE_PHRASE = re.compile(
    r"(?:final\s+answer|answer|(?:correct|best|right)\s+(?:option|choice|answer))"
    r"(?:\s+is|\s+would\s+be|\s+should\s+be)?\s*(?:\*\*|__)?\s*[:：=]?\s*(?:\*\*|__)?\s*"
    r"(?:option\s+|choice\s+)?[(\[]?(?P<l>[A-Z])(?![A-Za-z0-9'’])",
    re.IGNORECASE,
)
_LONE_LETTER = re.compile(r"[\s*_]*[(\[]?\s*(?P<l>[A-Z])\s*[)\]]?\s*[.:]?[\s*_]*")


def extract_choice(text: str | None, n_choices: int, choices: list[str] | None = None) -> str | None:
    """The chosen option letter, restricted to the first ``n_choices`` letters; ``None`` if none is found.

    Rules, first that applies wins:

    1. the last complete ``\\boxed{}``: a letter (``C``, ``(C)``, ``C.``, ``\\text{C}``, ``C) option text``) or, when
       ``choices`` is given, the exact text of one option;
    2. the last "answer is (C)" / "Answer: C" / "correct option is C" / "**Answer:** C" phrase (a capital letter
       standing alone, so "the answer is a fever" is not read as A);
    3. a reply (or its last non-empty line) that is only a letter: ``C``, ``(C)``, ``**C**``.

    A letter outside the valid range is never returned (a boxed ``E`` on a 4-choice question falls through).
    """
    if not text:
        return None
    valid = letters_for(n_choices)
    boxes = boxed_contents(text)
    if boxes:
        got = _letter_in_box(boxes[-1], valid, choices)
        if got:
            return got
    for m in reversed(list(_CHOICE_PHRASE.finditer(text))):
        letter = m.group("l")
        if letter.isupper() and letter in valid:
            return letter
    stripped = text.strip()
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    for cand in ([stripped] + ([lines[-1]] if lines else [])):
        m = _LONE_LETTER.fullmatch(cand)
        if m and m.group("l") in valid:
            return m.group("l")
    return None


# ---------------------------------------------------------------------------------------------------------------
# code
# ---------------------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+.#-]*)[^\n]*$", re.MULTILINE)
_PY_LANGS = {"python", "py", "python3", "py3"}
_LOOKS_LIKE_CODE = re.compile(r"^(?:def |async def |class |import |from \S+ import )", re.MULTILINE)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` for each fenced block; an unterminated last block runs to the end of the text."""
    blocks: list[tuple[str, str]] = []
    fences = list(_FENCE_RE.finditer(text))
    i = 0
    while i < len(fences):
        open_ = fences[i]
        lang = open_.group("lang").lower()
        close = None
        for j in range(i + 1, len(fences)):
            f = fences[j]
            if f.group("fence")[0] == open_.group("fence")[0] and len(f.group("fence")) >= len(open_.group("fence")) \
                    and not f.group("lang"):
                close = j
                break
        body_start = open_.end() + 1
        if close is None:
            body = text[body_start:].rstrip()
            if body.endswith(open_.group("fence")):  # a closing fence glued to the last code line
                body = body[: -len(open_.group("fence"))]
            blocks.append((lang, body))
            break
        blocks.append((lang, text[body_start:fences[close].start()]))
        i = close + 1
    return blocks


def extract_code(text: str | None) -> str | None:
    """The program in a reply, or ``None``.

    The last ```python (``py``, ``python3``) fenced block; else the last fenced block with no language or another
    language tag; else the whole reply if a line starts with ``def``/``class``/``import``/``from .. import``.
    A block cut off by the token limit (no closing fence) still counts. Blank blocks are ignored.
    """
    if not text:
        return None
    blocks = [(lang, body) for lang, body in _fenced_blocks(text) if body.strip()]
    py = [body for lang, body in blocks if lang in _PY_LANGS]
    if py:
        return py[-1].strip("\n").rstrip() + "\n"
    if blocks:
        return blocks[-1][1].strip("\n").rstrip() + "\n"
    if _LOOKS_LIKE_CODE.search(text):
        return text.strip("\n").rstrip() + "\n"
    return None
