"""Vector similarity search over cache entries (the ``vector`` extra: scikit-learn and numpy).

Every entry becomes one text document — its key plus the strings, numbers and nested keys found in its
value — and the documents are indexed with TF-IDF. A query is vectorized the same way and compared with
every document by cosine similarity, or by ``1 / (1 + distance)`` for the euclidean and manhattan
distances, so a score is always in ``[0, 1]`` and higher means closer.

scikit-learn, scipy and numpy are imported only when a search object is built: importing this module (or
``yokedcache``) never loads them.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .keys import normalize_tags

if TYPE_CHECKING:
    from .policy.cache import YokedCache

__all__ = [
    "MISSING_EXTRA_MESSAGE",
    "SIMILARITY_METHODS",
    "VectorSearchResult",
    "VectorSimilaritySearch",
    "entry_text",
    "rank_entries",
    "vector_search",
    "vector_search_sync",
]

MISSING_EXTRA_MESSAGE = "vector search needs the 'vector' extra: pip install 'yokedcache[vector]'"
SIMILARITY_METHODS = ("cosine", "euclidean", "manhattan")

# How many live entries a cache-wide search looks at (the same bound as fuzzy search).
_MAX_ENTRIES = 100_000
# Values nested deeper than this contribute nothing more to an entry's text.
_MAX_DEPTH = 100


@dataclass(frozen=True)
class VectorSearchResult:
    """One search hit: the entry's key, its similarity to the query in ``[0, 1]`` and its value."""

    key: str
    score: float
    value: Any


def _require_extra() -> Any:
    """The TfidfVectorizer class, or ImportError naming the extra when scikit-learn/numpy are missing."""
    try:
        import numpy  # noqa: F401
        import scipy.sparse  # noqa: F401
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError:
        raise ImportError(MISSING_EXTRA_MESSAGE) from None
    return TfidfVectorizer


# --- entry text ---------------------------------------------------------------------------------------
def entry_text(key: str, value: Any) -> str:
    """The document indexed for one entry: ``key`` followed by the strings, numbers and nested keys in
    ``value`` (walking dicts, lists, tuples, sets, dataclasses and pydantic models' fields)."""
    parts = [str(key)]
    parts.extend(_value_words(value, depth=0, path=set()))
    return " ".join(part for part in parts if part)


def _scalar_word(value: Any) -> str | None:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Number):
        return str(value)
    return None


def _model_fields(value: Any) -> Iterator[tuple[str, Any]] | None:
    """(name, value) pairs of a dataclass instance or pydantic model, else None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value))
    cls = type(value)
    fields = getattr(cls, "model_fields", None)  # pydantic 2
    if isinstance(fields, Mapping) and hasattr(value, "model_dump"):
        extra = getattr(value, "model_extra", None)
        names = list(fields) + (list(extra) if isinstance(extra, Mapping) else [])
        return ((str(name), getattr(value, str(name), None)) for name in names)
    fields = getattr(cls, "__fields__", None)  # pydantic 1
    if isinstance(fields, Mapping) and hasattr(value, "dict") and hasattr(cls, "parse_obj"):
        return ((str(name), getattr(value, str(name), None)) for name in fields)
    return None


def _value_words(value: Any, depth: int, path: set[int]) -> list[str]:
    word = _scalar_word(value)
    if word is not None:
        return [word]
    if depth >= _MAX_DEPTH or id(value) in path:
        return []
    pairs: Any = value.items() if isinstance(value, Mapping) else _model_fields(value)
    if pairs is None and not isinstance(value, (list, tuple, AbstractSet)):
        return []
    path.add(id(value))
    try:
        words: list[str] = []
        if pairs is not None:
            for name, item in pairs:
                name_word = _scalar_word(name)
                if name_word is not None:
                    words.append(name_word)
                words.extend(_value_words(item, depth + 1, path))
        elif isinstance(value, AbstractSet):
            # Set order varies between processes; sort the members' texts so an entry's text is stable.
            members = [" ".join(_value_words(item, depth + 1, path)) for item in value]
            words.extend(sorted(member for member in members if member))
        else:
            for item in value:
                words.extend(_value_words(item, depth + 1, path))
        return words
    finally:
        path.discard(id(value))


# --- the index ------------------------------------------------------------------------------------------
def _check_df(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an int >= 1 or a float in [0.0, 1.0], got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1 or a float in [0.0, 1.0], got {value!r}")
    elif not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be an int >= 1 or a float in [0.0, 1.0], got {value!r}")


class VectorSimilaritySearch:
    """TF-IDF similarity search over a mapping of cache entries.

    ``fit(data)`` indexes ``data``; ``search(query, data)`` ranks its entries against ``query``
    (re-indexing first when ``data``'s texts differ from the indexed ones). The object keeps the fitted
    data: ``update_cache_entry`` / ``remove_cache_entry`` edit it, and the next fit — ``fit()`` without
    an argument, or ``search(query)`` without ``data`` — indexes the edited data. Further keyword
    arguments go to scikit-learn's ``TfidfVectorizer``. ``min_df`` / ``max_df`` values that contradict
    each other or leave no term on the corpus at hand (common on small corpora) are relaxed instead of
    raising. Not thread-safe: use one object per thread.
    """

    def __init__(
        self,
        similarity_method: str = "cosine",
        max_features: int | None = 1000,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int | float = 1,
        max_df: int | float = 0.95,
        stop_words: str | list[str] | None = "english",
        lowercase: bool = True,
        strip_accents: str | None = "unicode",
        **tfidf_options: Any,
    ) -> None:
        if similarity_method not in SIMILARITY_METHODS:
            raise ValueError(
                f"unknown similarity_method {similarity_method!r}: use one of {', '.join(SIMILARITY_METHODS)}"
            )
        _check_df("min_df", min_df)
        _check_df("max_df", max_df)
        self._vectorizer_class = _require_extra()
        self.similarity_method = similarity_method
        self.min_df = min_df
        self.max_df = max_df
        self._options: dict[str, Any] = {
            "max_features": max_features,
            "ngram_range": tuple(ngram_range),
            "stop_words": stop_words,
            "lowercase": lowercase,
            "strip_accents": strip_accents,
            **tfidf_options,
        }
        self._vectorizer_class(**self._options)  # unknown option names fail here, not at the first fit
        self._data: dict[str, Any] = {}
        self._keys: list[str] = []
        self._texts: list[str] = []
        self._vectorizer: Any = None
        self._matrix: Any = None
        self._stale = True

    # -- data ---------------------------------------------------------------------------------------------
    @property
    def data(self) -> dict[str, Any]:
        """A copy of the entries the next fit will index (the fitted data plus any edits)."""
        return dict(self._data)

    @property
    def is_fitted(self) -> bool:
        """Whether the index matches the current data (False after an edit, until the next fit)."""
        return not self._stale

    def update_cache_entry(self, key: str, value: Any) -> None:
        """Add or replace ``key`` in the data the next fit indexes."""
        self._data[str(key)] = value
        self._stale = True

    def remove_cache_entry(self, key: str) -> None:
        """Drop ``key`` from the data the next fit indexes (nothing happens if it is absent)."""
        if self._data.pop(str(key), _ABSENT) is not _ABSENT:
            self._stale = True

    # -- fitting ------------------------------------------------------------------------------------------
    def fit(self, data: Mapping[str, Any] | None = None) -> VectorSimilaritySearch:
        """Index ``data`` (a mapping of key to value; ``None`` re-indexes the current data, including
        edits). Returns ``self``."""
        if data is not None:
            self._data = {str(key): value for key, value in data.items()}
        keys = list(self._data)
        self._build(keys, [entry_text(key, self._data[key]) for key in keys])
        return self

    def _build(self, keys: list[str], texts: list[str]) -> None:
        self._keys, self._texts = keys, texts
        self._vectorizer, self._matrix = self._vectorize(texts)
        self._stale = False

    def _vectorize(self, texts: list[str]) -> tuple[Any, Any]:
        """(fitted vectorizer, document matrix), or (None, None) when no document has an indexable term."""
        if not texts:
            return None, None
        analyzer = self._vectorizer_class(min_df=1, max_df=1.0, **self._options).build_analyzer()
        if not any(analyzer(text) for text in texts):
            return None, None  # every text is empty, stop words or too-short tokens
        failure: ValueError | None = None
        for min_df, max_df in self._df_attempts(len(texts)):
            vectorizer = self._vectorizer_class(min_df=min_df, max_df=max_df, **self._options)
            try:
                return vectorizer, vectorizer.fit_transform(texts).tocsr()
            except ValueError as exc:
                # max_df below min_df, or nothing left after pruning: small corpora hit both.
                failure = exc
        assert failure is not None
        raise failure

    def _df_attempts(self, n_docs: int) -> list[tuple[int | float, int | float]]:
        """The (min_df, max_df) pairs to try, the configured ones first, then relaxed ones.

        A fractional ``max_df`` is meant to drop near-universal terms. On a corpus so small that it could
        only drop the terms found in *every* document (``max_df * n >= n - 1``, e.g. fewer than 21
        documents for 0.95) it would make a term shared by a handful of entries — say, the few carrying a
        tag — unsearchable, so it is not applied there."""
        max_df = self.max_df
        if not isinstance(max_df, numbers.Integral) and max_df < 1.0 and max_df * n_docs >= n_docs - 1:
            max_df = 1.0
        attempts: list[tuple[int | float, int | float]] = [(self.min_df, max_df)]
        min_count = self.min_df if isinstance(self.min_df, numbers.Integral) else self.min_df * n_docs
        relaxed_min: int | float = self.min_df if min_count <= n_docs else 1
        attempts += [(relaxed_min, 1.0), (1, 1.0)]
        unique: list[tuple[int | float, int | float]] = []
        for pair in attempts:  # int 1 (one document) and float 1.0 (all documents) differ: compare types
            if not any(repr(pair) == repr(seen) for seen in unique):
                unique.append(pair)
        return unique

    # -- searching ----------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        data: Mapping[str, Any] | None = None,
        threshold: float = 0.1,
        max_results: int = 10,
    ) -> list[VectorSearchResult]:
        """Entries of ``data`` (``None``: the current data) scoring at least ``threshold`` against
        ``query``, best first (ties by key), at most ``max_results``."""
        if data is not None:
            entries = {str(key): value for key, value in data.items()}
            keys = list(entries)
            texts = [entry_text(key, entries[key]) for key in keys]
            self._data = entries
            if self._stale or keys != self._keys or texts != self._texts:
                self._build(keys, texts)
        elif self._stale:
            self.fit()
        if max_results <= 0 or self._vectorizer is None:
            return []
        scores = self._scores(str(query))
        if scores is None:
            return []
        results = [
            VectorSearchResult(key, score, self._data[key])
            for key, score in zip(self._keys, scores)
            if score is not None and score >= threshold
        ]
        results.sort(key=lambda result: (-result.score, result.key))
        return results[:max_results]

    def _scores(self, query: str) -> list[float | None] | None:
        """Each document's score (None for documents without indexed terms); None when the query has
        no indexed term, so nothing can match it."""
        import numpy as np
        import scipy.sparse as sp

        vector = self._vectorizer.transform([query]).tocsr()
        if vector.nnz == 0:
            return None
        matrix = self._matrix
        if self.similarity_method == "cosine":
            from sklearn.metrics.pairwise import cosine_similarity

            raw = np.asarray(cosine_similarity(matrix, vector)).ravel()
        else:
            # Exact differences (no |a|² + |b|² - 2ab rounding), so identical texts are at distance 0.
            repeated = sp.csr_matrix(np.ones((matrix.shape[0], 1))) @ vector
            diff = matrix - repeated
            if self.similarity_method == "euclidean":
                distance = np.sqrt(np.asarray(diff.multiply(diff).sum(axis=1)).ravel())
            else:
                distance = np.asarray(abs(diff).sum(axis=1)).ravel()
            raw = 1.0 / (1.0 + distance)
        indexed = np.diff(matrix.indptr) > 0
        return [
            min(1.0, max(0.0, float(score))) if has_terms else None
            for score, has_terms in zip(raw.tolist(), indexed.tolist())
        ]

    def __repr__(self) -> str:
        return (
            f"VectorSimilaritySearch(similarity_method={self.similarity_method!r}, "
            f"entries={len(self._data)}, fitted={not self._stale})"
        )


_ABSENT = object()


# --- cache-wide search ------------------------------------------------------------------------------------
def rank_entries(
    entries: Mapping[str, Any],
    query: str,
    threshold: float = 0.1,
    max_results: int = 10,
    **vectorizer_options: Any,
) -> list[VectorSearchResult]:
    """Fit a fresh :class:`VectorSimilaritySearch` (built from ``vectorizer_options``) on ``entries``
    and search it."""
    searcher = VectorSimilaritySearch(**vectorizer_options)
    return searcher.search(query, entries, threshold=threshold, max_results=max_results)


async def vector_search(
    cache: YokedCache,
    query: str,
    threshold: float = 0.1,
    max_results: int = 10,
    tags: Any = None,
    **vectorizer_options: Any,
) -> list[VectorSearchResult]:
    """Rank ``cache``'s live entries (only those carrying any of ``tags``, if given) against ``query``."""
    searcher = VectorSimilaritySearch(**vectorizer_options)  # a bad option fails before any I/O
    wanted = set(normalize_tags(tags))
    keys = await cache.get_all_keys(limit=_MAX_ENTRIES)
    if wanted:
        kept = []
        for key in keys:
            meta = await cache.get_meta(key)
            if meta is not None and wanted.intersection(meta.get("tags", ())):
                kept.append(key)
        keys = kept
    entries = await cache.get_many(sorted(keys)) if keys else {}
    return searcher.search(query, entries, threshold=threshold, max_results=max_results)


def vector_search_sync(
    cache: YokedCache,
    query: str,
    threshold: float = 0.1,
    max_results: int = 10,
    tags: Any = None,
    **vectorizer_options: Any,
) -> list[VectorSearchResult]:
    """The blocking twin of :func:`vector_search` (uses the cache's ``*_sync`` methods)."""
    searcher = VectorSimilaritySearch(**vectorizer_options)
    wanted = set(normalize_tags(tags))
    keys = cache.get_all_keys_sync(limit=_MAX_ENTRIES)
    if wanted:
        kept = []
        for key in keys:
            meta = cache.get_meta_sync(key)
            if meta is not None and wanted.intersection(meta.get("tags", ())):
                kept.append(key)
        keys = kept
    entries = cache.get_many_sync(sorted(keys)) if keys else {}
    return searcher.search(query, entries, threshold=threshold, max_results=max_results)
