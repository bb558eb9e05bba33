"""Vector (TF-IDF) search: the VectorSimilaritySearch object and the cache-wide functions, on real
memory and Redis caches (the ``cache`` fixture is parametrized over both)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("numpy")

from yokedcache.vector_search import (
    MISSING_EXTRA_MESSAGE,
    SIMILARITY_METHODS,
    VectorSearchResult,
    VectorSimilaritySearch,
    entry_text,
    rank_entries,
    vector_search,
    vector_search_sync,
)

ARTICLES: dict[str, Any] = {
    "article:python": {
        "title": "Python programming for beginners",
        "body": "Learn python programming: functions, classes and modules in python.",
    },
    "article:cooking": {
        "title": "Cooking pasta at home",
        "body": "A recipe for fresh pasta with tomato sauce, basil and garlic.",
    },
    "article:garden": {
        "title": "Growing tomatoes in the garden",
        "body": "Watering, pruning and harvesting tomato plants in summer.",
    },
    "article:rust": {
        "title": "Systems programming with Rust",
        "body": "Ownership, borrowing and lifetimes for safe systems code.",
    },
}


async def fill(cache: Any, data: dict[str, Any] = ARTICLES, tags: Any = None) -> None:
    assert await cache.set_many(data, ttl=300, tags=tags)


def assert_well_formed(results: list[VectorSearchResult], threshold: float = 0.0) -> None:
    for result in results:
        assert isinstance(result, VectorSearchResult)
        assert isinstance(result.score, float)
        assert 0.0 <= result.score <= 1.0
        assert result.score >= threshold
    assert [(-r.score, r.key) for r in results] == sorted((-r.score, r.key) for r in results)


# --- cache-wide search (memory and Redis) -----------------------------------------------------------------
async def test_ranks_the_matching_entry_first(cache: Any) -> None:
    await fill(cache)
    results = await vector_search(cache, "python programming", threshold=0.0, max_results=10)
    assert_well_formed(results)
    assert results[0].key == "article:python"
    assert results[0].value == ARTICLES["article:python"]
    scores = {r.key: r.score for r in results}
    assert scores["article:python"] > scores["article:cooking"]
    assert scores["article:python"] > scores["article:rust"] > scores["article:cooking"]


@pytest.mark.parametrize("method", SIMILARITY_METHODS)
async def test_every_method_scores_in_unit_interval_and_finds_the_top_hit(cache: Any, method: str) -> None:
    await fill(cache)
    results = await vector_search(cache, "pasta recipe", threshold=0.0, similarity_method=method)
    assert_well_formed(results)
    assert results[0].key == "article:cooking"
    assert len(results) == len(ARTICLES)
    assert all(r.score < results[0].score for r in results[1:])


@pytest.mark.parametrize("method", SIMILARITY_METHODS)
async def test_threshold_keeps_only_scores_at_or_above_it(cache: Any, method: str) -> None:
    await fill(cache)
    everything = await vector_search(cache, "tomato", threshold=0.0, similarity_method=method)
    assert len(everything) == len(ARTICLES)
    cut = everything[1].score  # keeps the entries scoring at least the runner-up's score
    kept = await vector_search(cache, "tomato", threshold=cut, similarity_method=method)
    assert kept == [r for r in everything if r.score >= cut]
    assert_well_formed(kept, threshold=cut)
    assert await vector_search(cache, "tomato", threshold=1.01, similarity_method=method) == []


async def test_default_threshold_drops_unrelated_entries(cache: Any) -> None:
    await fill(cache)
    results = await vector_search(cache, "python programming")
    keys = {r.key for r in results}
    assert "article:python" in keys
    assert "article:cooking" not in keys  # cosine 0 < default threshold 0.1


async def test_max_results_limits_the_list(cache: Any) -> None:
    await fill(cache)
    everything = await vector_search(cache, "programming", threshold=0.0)
    assert len(everything) == len(ARTICLES)
    assert await vector_search(cache, "programming", threshold=0.0, max_results=2) == everything[:2]
    assert await vector_search(cache, "programming", threshold=0.0, max_results=0) == []


async def test_tags_keep_entries_carrying_any_of_them(cache: Any) -> None:
    await fill(cache, {k: v for k, v in ARTICLES.items() if k in ("article:python", "article:rust")}, "code")
    await fill(cache, {"article:cooking": ARTICLES["article:cooking"]}, ["food", "home"])
    await fill(cache, {"article:garden": ARTICLES["article:garden"]})

    code = await vector_search(cache, "programming", threshold=0.0, tags="code")
    assert {r.key for r in code} == {"article:python", "article:rust"}
    any_of = await vector_search(cache, "programming", threshold=0.0, tags=["home", "code"])
    assert {r.key for r in any_of} == {"article:python", "article:rust", "article:cooking"}
    assert await vector_search(cache, "programming", threshold=0.0, tags=["nobody"]) == []
    untagged = await vector_search(cache, "programming", threshold=0.0)
    assert len(untagged) == len(ARTICLES)


async def test_invalidated_and_deleted_entries_are_not_searched(cache: Any) -> None:
    await fill(cache, {"article:python": ARTICLES["article:python"]}, "code")
    await fill(cache, {"article:rust": ARTICLES["article:rust"]})
    assert {r.key for r in await vector_search(cache, "programming")} == {"article:python", "article:rust"}
    await cache.invalidate_tags("code")
    await cache.delete("article:rust")
    assert await vector_search(cache, "programming") == []


async def test_empty_cache_gives_no_results(cache: Any) -> None:
    assert await vector_search(cache, "anything") == []
    assert vector_search_sync(cache, "anything") == []


async def test_stop_words_only_corpus_gives_no_results(cache: Any) -> None:
    # Keys are one character (below the tokenizer's two-character minimum), values only stop words.
    await fill(cache, {"a": "the and of", "b": ["it", "is", "was"], "c": {"x": "for the"}})
    assert await vector_search(cache, "the") == []
    assert await vector_search(cache, "the", threshold=0.0) == []
    # Keeping stop words makes the same corpus searchable.
    found = await vector_search(cache, "the", threshold=0.0, stop_words=None)
    assert found and found[0].key in ("a", "c")


async def test_single_entry_cache_is_searchable(cache: Any) -> None:
    # One document: the default max_df=0.95 allows no term at all; the search falls back instead of raising.
    await fill(cache, {"article:python": ARTICLES["article:python"]})
    results = await vector_search(cache, "python")
    assert [r.key for r in results] == ["article:python"]


async def test_invalid_method_raises_before_any_io(cache: Any) -> None:
    with pytest.raises(ValueError, match="'dot_product'"):
        await vector_search(cache, "python", similarity_method="dot_product")
    with pytest.raises(ValueError, match="'dot_product'"):
        vector_search_sync(cache, "python", similarity_method="dot_product")


@pytest.mark.parametrize("method", SIMILARITY_METHODS)
async def test_sync_twin_gives_the_async_results(cache: Any, method: str) -> None:
    await fill(cache, {k: v for k, v in ARTICLES.items() if k != "article:garden"}, "kept")
    await fill(cache, {"article:garden": ARTICLES["article:garden"]})
    for query, tags in (("programming", None), ("tomato garden", None), ("python", "kept")):
        expected = await vector_search(cache, query, threshold=0.0, tags=tags, similarity_method=method)
        assert expected
        assert (
            vector_search_sync(cache, query, threshold=0.0, tags=tags, similarity_method=method) == expected
        )


def test_sync_twin_on_a_sync_cache(sync_cache: Any) -> None:
    assert sync_cache.set_many_sync(ARTICLES, ttl=300)
    results = vector_search_sync(sync_cache, "python programming", max_results=1)
    assert [r.key for r in results] == ["article:python"]
    assert results[0].value == ARTICLES["article:python"]


async def test_vectorizer_options_reach_the_vectorizer(cache: Any) -> None:
    await fill(cache)
    # max_features=1 keeps only the most frequent term, "article" (in every key).
    options: dict[str, Any] = {"max_features": 1, "ngram_range": (1, 1), "threshold": 0.0}
    assert await vector_search(cache, "python", **options) == []
    assert len(await vector_search(cache, "article", **options)) == len(ARTICLES)
    assert len(vector_search_sync(cache, "article", **options)) == len(ARTICLES)


async def test_cache_method_agrees_when_present(cache: Any) -> None:
    method = getattr(cache, "vector_search", None)
    if method is None:
        pytest.skip("YokedCache.vector_search is not wired yet")
    await fill(cache)
    expected = await vector_search(cache, "systems programming", threshold=0.0)
    assert await method("systems programming", threshold=0.0) == expected
    assert cache.vector_search_sync("systems programming", threshold=0.0) == expected


# --- VectorSimilaritySearch ---------------------------------------------------------------------------
def test_update_and_remove_edit_the_data_of_the_next_fit() -> None:
    search = VectorSimilaritySearch().fit(ARTICLES)
    assert search.is_fitted
    assert search.search("kubernetes") == []

    search.update_cache_entry("article:k8s", {"title": "Kubernetes clusters", "body": "pods and nodes"})
    assert not search.is_fitted
    assert "article:k8s" in search.data
    hits = search.search("kubernetes")  # refits the edited data
    assert [r.key for r in hits] == ["article:k8s"]
    assert hits[0].value == {"title": "Kubernetes clusters", "body": "pods and nodes"}
    assert search.is_fitted

    search.update_cache_entry("article:k8s", "container orchestration")  # replaces the entry
    search.fit()
    assert search.search("kubernetes") == []
    assert [r.key for r in search.search("orchestration")] == ["article:k8s"]

    search.remove_cache_entry("article:k8s")
    search.remove_cache_entry("never-there")
    assert [r.key for r in search.search("python programming", max_results=1)] == ["article:python"]
    assert search.search("orchestration") == []
    assert set(search.data) == set(ARTICLES)


def test_fit_with_data_replaces_edits_and_returns_self() -> None:
    search = VectorSimilaritySearch()
    search.update_cache_entry("solo", "standalone document about databases")
    assert [r.key for r in search.search("databases")] == ["solo"]
    assert search.fit(ARTICLES) is search
    assert search.search("databases") == []
    assert set(search.data) == set(ARTICLES)


def test_search_with_new_data_reindexes() -> None:
    search = VectorSimilaritySearch()
    assert [r.key for r in search.search("python", ARTICLES)] == ["article:python"]
    other = {"doc:one": "python snakes in the zoo", "doc:two": "lions in the zoo"}
    assert [r.key for r in search.search("python", other)] == ["doc:one"]
    # Same texts, new values: the index is reused but the returned values are the new ones.
    renamed = {"doc:one": ["python", "snakes", "in", "the", "zoo"], "doc:two": "lions in the zoo"}
    assert search.search("python", renamed)[0].value == renamed["doc:one"]


def test_empty_and_stop_word_corpora() -> None:
    search = VectorSimilaritySearch()
    assert search.fit({}).search("anything") == []
    assert search.search("anything", {}) == []
    assert search.search("the", {"x": "the of and", "y": None, "z": ""}) == []
    for method in SIMILARITY_METHODS:
        assert VectorSimilaritySearch(method).search("of", {"x": "of"}, threshold=0.0) == []


def test_query_without_indexed_terms_matches_nothing() -> None:
    for method in SIMILARITY_METHODS:
        search = VectorSimilaritySearch(method).fit(ARTICLES)
        assert search.search("zebra quantum", threshold=0.0) == []
        assert search.search("", threshold=0.0) == []


def test_entries_without_indexed_terms_never_match() -> None:
    data = {"article:python": "python programming", "e": "the", "f": None}
    for method in SIMILARITY_METHODS:
        results = VectorSimilaritySearch(method).search("python", data, threshold=0.0)
        assert [r.key for r in results] == ["article:python"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_df": 0.5},
        {"max_df": 1},
        {"min_df": 5},
        {"min_df": 0.9, "max_df": 0.1},
        {"min_df": 3, "max_df": 2},
    ],
)
def test_document_frequency_limits_never_raise_on_tiny_corpora(options: dict[str, Any]) -> None:
    for data in (
        {"only": "python programming"},
        {"one": "python programming", "two": "python programming"},
        {"one": "python programming", "two": "python cooking"},
    ):
        results = VectorSimilaritySearch(**options).search("python programming", data, threshold=0.0)
        assert results, (options, data)
        assert_well_formed(results)


def test_configured_document_frequency_limits_apply_when_they_can() -> None:
    corpus = {f"doc{i}": f"common word{i} extra{i}" for i in range(20)}
    # "common" is in every document: max_df=0.5 prunes it, so it cannot match.
    assert VectorSimilaritySearch(max_df=0.5).search("common", corpus, threshold=0.0) == []
    assert (
        len(VectorSimilaritySearch(max_df=1.0).search("common", corpus, threshold=0.0, max_results=50)) == 20
    )


def test_default_max_df_spares_terms_shared_by_a_small_corpus() -> None:
    small = {"one": "python programming", "two": "python cooking"}
    assert {r.key for r in VectorSimilaritySearch().search("python", small, threshold=0.0)} == {"one", "two"}
    # With enough documents the default max_df=0.95 drops a term found in every one of them.
    large = {f"doc{i}": f"python word{i}" for i in range(30)}
    assert VectorSimilaritySearch().search("python", large, threshold=0.0) == []
    assert [r.key for r in VectorSimilaritySearch().search("python word7", large)] == ["doc7"]


def test_identical_texts_tie_and_sort_by_key() -> None:
    data = {"b:item": "python guide", "a:item": "python guide", "c:item": "cooking guide"}
    for method in SIMILARITY_METHODS:
        results = VectorSimilaritySearch(method).search("python guide", data, threshold=0.0)
        assert [r.key for r in results[:2]] == ["a:item", "b:item"]
        assert results[0].score == results[1].score
    exact = VectorSimilaritySearch("euclidean").search("python guide", {"k": "python guide"})
    assert exact[0].score == 1.0


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="'jaccard'"):
        VectorSimilaritySearch(similarity_method="jaccard")
    with pytest.raises(ValueError, match="max_df"):
        VectorSimilaritySearch(max_df=2.5)
    with pytest.raises(ValueError, match="min_df"):
        VectorSimilaritySearch(min_df=0)
    with pytest.raises(ValueError, match="min_df"):
        VectorSimilaritySearch(min_df=True)
    with pytest.raises(TypeError):
        VectorSimilaritySearch(no_such_option=1)


def test_rank_entries_matches_the_object() -> None:
    expected = VectorSimilaritySearch("manhattan").search("pasta", ARTICLES, threshold=0.0, max_results=3)
    assert rank_entries(ARTICLES, "pasta", 0.0, 3, similarity_method="manhattan") == expected


def test_result_is_a_frozen_dataclass() -> None:
    result = VectorSearchResult("k", 0.5, {"v": 1})
    assert (result.key, result.score, result.value) == ("k", 0.5, {"v": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 1.0  # type: ignore[misc]


# --- entry text ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Author:
    name: str
    books: list[str]


def test_entry_text_walks_nested_values() -> None:
    value = {
        "title": "Deep nesting",
        "count": 42,
        "ratio": 2.5,
        "flag": True,
        "nothing": None,
        "items": [("tuple", 7), {"inner_key": "inner value"}],
        "labels": {"zeta", "alpha"},
        "author": Author("Ada Lovelace", ["Notes"]),
        "raw": b"bytes are skipped",
    }
    text = entry_text("book:1", value)
    for word in ("book:1", "title", "Deep nesting", "count", "42", "2.5", "items", "tuple", "7"):
        assert word in text
    for word in (
        "inner_key",
        "inner value",
        "alpha zeta",
        "author",
        "name",
        "Ada Lovelace",
        "books",
        "Notes",
    ):
        assert word in text
    assert "True" not in text and "None" not in text and "bytes are skipped" not in text


def test_entry_text_reads_pydantic_models() -> None:
    pytest.importorskip("pydantic")
    from pydantic import BaseModel

    class Profile(BaseModel):
        handle: str
        bio: str
        followers: int

    text = entry_text("user:9", Profile(handle="pythonista", bio="writes about asyncio", followers=1200))
    for word in ("user:9", "handle", "pythonista", "bio", "writes about asyncio", "followers", "1200"):
        assert word in text
    results = VectorSimilaritySearch().search(
        "asyncio", {"user:9": Profile(handle="pythonista", bio="writes about asyncio", followers=1)}
    )
    assert [r.key for r in results] == ["user:9"]


def test_entry_text_survives_cycles_and_deep_nesting() -> None:
    loop: list[Any] = ["looped"]
    loop.append(loop)
    assert entry_text("k", loop) == "k looped"
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    assert entry_text("k", deep) == "k"  # too deep: ignored, no RecursionError


# --- optional dependency ------------------------------------------------------------------------------
def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_importing_yokedcache_does_not_import_the_extra() -> None:
    done = _run(
        """
        import sys
        import yokedcache
        import yokedcache.vector_search
        loaded = sorted(m for m in ("sklearn", "numpy", "scipy") if m in sys.modules)
        print(",".join(loaded) or "none")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_missing_extra_raises_import_error_naming_it() -> None:
    done = _run(
        """
        import asyncio, sys
        sys.modules["sklearn"] = None  # as if scikit-learn were not installed
        from yokedcache import YokedCache
        from yokedcache.vector_search import VectorSimilaritySearch, vector_search, vector_search_sync
        cache = YokedCache()
        for attempt in (
            lambda: VectorSimilaritySearch(),
            lambda: vector_search_sync(cache, "q"),
            lambda: asyncio.run(vector_search(cache, "q")),
        ):
            try:
                attempt()
            except ImportError as exc:
                print(exc)
            else:
                print("no error")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [MISSING_EXTRA_MESSAGE] * 3
