"""The embedded default corpus: English prose from the running Python's own standard-library documentation.

It needs no download on any machine: the pydoc topic texts (``pydoc_data.topics``) plus the docstrings of the
standard library's modules, classes and functions, read with ``ast`` (nothing is imported or executed).
Files are visited in sorted order, so the corpus is deterministic for a given Python version. Every 20th
document goes to the held-out validation split.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from pathlib import Path

MAX_CHARS = 2_200_000
MIN_DOC_CHARS = 200
VALIDATION_EVERY = 20
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__", "ensurepip"}


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOC_CHARS:
                out.append(doc)
    return out


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
    """All documents of the built-in corpus, in a fixed order (~2 MB of text)."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(lib).parts[:-1])))
    total = sum(len(d) for d in docs)
    for f in files:
        for d in _docstrings(f):
            if total >= MAX_CHARS:
                return tuple(docs)
            docs.append(d)
            total += len(d)
    return tuple(docs)


def builtin_splits() -> tuple[list[str], list[str]]:
    """(train, validation) documents of the built-in corpus."""
    docs = builtin_documents()
    train = [d for i, d in enumerate(docs) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    val = [d for i, d in enumerate(docs) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    return train, val


def corpus_fingerprint(texts: list[str] | tuple[str, ...]) -> str:
    """Short stable hash of a list of documents (cache keys for tokenizers and teachers)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]
