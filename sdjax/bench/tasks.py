"""Spec-Bench-style task categories built from the corpus's held-out benchmark files.

- `completion`: continue a file from a prefix that ends at a random line.
- `function_body`: write a function's body from its signature and docstring.
- `copy_edit`: the prompt holds a file up to a function's end, then asks for it again
  under a new name (the answer mostly repeats the prompt: the case prompt lookup is made for).
- `long_context`: continue a file from a long prefix (most of the model's context).
- `prose`: continue English prose: a long docstring of the held-out files (the stdlib's
  documentation written inline), cut after a sentence.

Prompts are token-id lists, left-truncated to their category's length; the draw is
seeded, so every method (and `transformers`) sees the same prompts.
"""

from __future__ import annotations

import ast
import random
from typing import Dict, List, NamedTuple, Sequence

from sdjax.data import corpus_files

CATEGORIES = ("completion", "function_body", "copy_edit", "long_context", "prose")
PROMPT_TOKENS = {"completion": 256, "function_body": 384, "copy_edit": 512, "long_context": 768,
                 "prose": 160}
_PROSE_CHARS = 600  # docstrings at least this long count as prose


class Task(NamedTuple):
    """One benchmark prompt and where it came from."""
    category: str
    source: str  # where the prompt comes from: "basename.py:line"
    prompt: List[int]


def _functions(tree: ast.AST) -> List[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _line_offsets(text: str) -> List[int]:
    offsets, total = [0], 0
    for line in text.splitlines(keepends=True):
        total += len(line)
        offsets.append(total)
    return offsets


def _candidates(category: str, path: str, text: str) -> List[tuple]:
    """(prompt text, label) pairs this file offers for the category."""
    name = path.rsplit("/", 1)[-1]
    lines = _line_offsets(text)
    if category in ("completion", "long_context"):
        start = len(lines) // 3 if category == "completion" else len(lines) // 2
        return [(text[: lines[i]], f"{name}:{i + 1}") for i in range(start, len(lines) - 8, 7)]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    if category == "prose":
        return _prose(tree, name)
    found = []
    for fn in _functions(tree):
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and
                                           isinstance(getattr(s, "value", None), ast.Constant)
                                           and isinstance(s.value.value, str))]
        if category == "function_body":
            if ast.get_docstring(fn) and len(body) >= 3:
                found.append((text[: lines[fn.body[0].end_lineno]], f"{name}:{fn.lineno}"))
        elif 8 <= fn.end_lineno - fn.lineno <= 30 and fn.col_offset == 0:
            source = text[lines[fn.lineno - 1]: lines[fn.end_lineno]]
            new_name = f"{fn.name}_v2"
            header = source.splitlines(keepends=True)[0].replace(
                f"def {fn.name}(", f"def {new_name}(", 1)
            prompt = (f"{text[: lines[fn.end_lineno]]}\n\n"
                      f"# The same function again, renamed to {new_name}:\n{header}")
            found.append((prompt, f"{name}:{fn.lineno}"))
    return found


def _prose(tree: ast.AST, name: str) -> List[tuple]:
    """Long docstrings, cut after a sentence about two thirds in."""
    found = []
    for node in [tree, *(n for n in ast.walk(tree) if isinstance(
            n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]:
        doc = ast.get_docstring(node)
        if not doc or len(doc) < _PROSE_CHARS:
            continue
        cut = doc.find(". ", 2 * len(doc) // 3)
        if cut > 0:
            found.append((doc[: cut + 1], f"{name}:{getattr(node, 'lineno', 1)}"))
    return found


def build_tasks(tokenizer, num_prompts: int, seed: int = 0,
                categories: Sequence[str] = CATEGORIES,
                prompt_tokens: Dict[str, int] = PROMPT_TOKENS) -> Dict[str, List[Task]]:
    """`num_prompts` tasks per category from the benchmark split, at most one per file."""
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {list(CATEGORIES)}")
    files = corpus_files("benchmark")
    # A tokenizer that starts every text with BOS (Gemma) gets it before each prompt.
    bos = [tokenizer.bos_token_id] if tokenizer("x")["input_ids"][0] == \
        tokenizer.bos_token_id else []
    tasks = {}
    for category in categories:
        rng = random.Random(f"{seed}/{category}")
        order = rng.sample(files, len(files))
        chosen: List[Task] = []
        for path in order:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            options = _candidates(category, path, text)
            if not options:
                continue
            prompt_text, label = rng.choice(options)
            ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            if len(ids) < prompt_tokens[category] // 2:
                continue  # too little context to be a fair instance of the category
            start = max(0, len(ids) + len(bos) - prompt_tokens[category])
            chosen.append(Task(category, label, bos + ids[start:]))
            if len(chosen) == num_prompts:
                break
        if len(chosen) < num_prompts:
            raise ValueError(f"the benchmark split offers only {len(chosen)} "
                             f"{category} prompts, {num_prompts} asked")
        tasks[category] = chosen
    return tasks
