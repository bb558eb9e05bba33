"""HTTPCacheMiddleware (API §12) against a real FastAPI app, on the memory and Redis backends.

Each endpoint counts its calls, so "served from the cache" is proven by the app not running again.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from yokedcache import YokedCache
from yokedcache.exceptions import CacheKeyError
from yokedcache.middleware import HTTPCacheMiddleware

BIG = b"0123456789" * 500  # 5,000 bytes
LIMIT = 1_000  # max_body_size used by the tests that care about it


def make_app(cache: YokedCache, **options: Any) -> tuple[FastAPI, Counter[str]]:
    calls: Counter[str] = Counter()
    app = FastAPI()

    def count(request: Request) -> int:
        calls[request.url.path] += 1
        return calls[request.url.path]

    @app.api_route("/items", methods=["GET", "HEAD"])
    async def items(request: Request) -> JSONResponse:
        return JSONResponse({"calls": count(request), "query": str(request.url.query)})

    @app.get("/headers")
    async def with_headers(request: Request) -> Response:
        """Responds with the headers named in the query: /headers?h=name:value&h=..."""
        count(request)
        pairs = [item.split(":", 1) for item in request.query_params.getlist("h")]
        return PlainTextResponse("body", headers={name: value for name, value in pairs})

    @app.get("/cookie")
    async def cookie(request: Request) -> Response:
        count(request)
        response = PlainTextResponse("hello")
        response.set_cookie("session", "abc")
        return response

    @app.get("/status/{code}")
    async def status(code: int, request: Request) -> Response:
        count(request)
        return PlainTextResponse(f"status {code}", status_code=code)

    @app.get("/empty")
    async def empty(request: Request) -> Response:
        count(request)
        return Response(status_code=204)

    @app.get("/big")
    async def big(request: Request) -> Response:
        count(request)
        return Response(BIG, media_type="application/octet-stream")

    @app.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        count(request)
        size = int(request.query_params.get("size", "30"))
        chunk = b"x" * 10

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(size // 10):
                yield str(i).encode() + chunk[1:]

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        count(request)

        async def lines() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            yield b"data: two\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    @app.api_route("/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> Response:
        number = count(request)
        body = await request.body()
        return PlainTextResponse(f"{number}:{len(body)}:{hashlib.sha256(body).hexdigest()}")

    for path in ("/admin", "/admin/users", "/administrator"):

        async def page(request: Request) -> Response:
            return PlainTextResponse(f"{count(request)}")

        app.add_api_route(path, page, methods=["GET"])

    app.add_middleware(HTTPCacheMiddleware, cache=cache, **options)
    return app, calls


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def fetch(app: Any, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
    async with client(app) as http:
        return await http.request(method, path, **kwargs)


async def fetch_all(app: Any, path: str, times: int, **kwargs: Any) -> list[httpx.Response]:
    return [await fetch(app, path, **kwargs) for _ in range(times)]


def states(responses: Iterable[httpx.Response]) -> list[str | None]:
    return [response.headers.get("x-yokedcache") for response in responses]


def body_etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


ITEMS_KEY = "http:GET:http://testserver/items"


# --- hits and misses ---------------------------------------------------------------------------------------
async def test_second_get_is_served_from_the_cache(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    first, second, third = await fetch_all(app, "/items", 3)
    assert calls["/items"] == 1
    assert states([first, second, third]) == ["MISS", "HIT", "HIT"]
    assert first.json() == second.json() == third.json() == {"calls": 1, "query": ""}
    assert second.headers["content-type"] == "application/json"
    assert second.headers["content-length"] == str(len(second.content))
    stats = await cache.get_stats()
    assert (stats.cache_hits, stats.cache_misses) == (2, 1)


async def test_default_key_is_method_and_full_url_with_query_as_received(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    await fetch(app, "/items?a=1&b=2")
    await fetch(app, "/items?b=2&a=1")
    assert (await fetch(app, "/items?a=1&b=2")).headers["x-yokedcache"] == "HIT"
    assert calls["/items"] == 2
    assert await cache.exists(f"{ITEMS_KEY}?a=1&b=2")
    assert await cache.exists(f"{ITEMS_KEY}?b=2&a=1")


async def test_host_is_part_of_the_key(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    await fetch(app, "/items", headers={"host": "a.example"})
    await fetch(app, "/items", headers={"host": "b.example"})
    assert calls["/items"] == 2


async def test_request_cache_control_is_ignored(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    await fetch(app, "/items")
    response = await fetch(app, "/items", headers={"cache-control": "no-cache", "pragma": "no-cache"})
    assert response.headers["x-yokedcache"] == "HIT"
    assert calls["/items"] == 1


async def test_uncached_methods_pass_through_untouched(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    responses = [await fetch(app, "/echo", "POST", content=b"x") for _ in range(2)]
    assert calls["/echo"] == 2
    assert states(responses) == [None, None]
    assert "etag" not in responses[0].headers


async def test_tags_invalidate_stored_responses(cache: YokedCache) -> None:
    app, calls = make_app(cache, tags=("pages",))
    await fetch(app, "/items")
    assert (await fetch(app, "/items")).headers["x-yokedcache"] == "HIT"
    await cache.invalidate_tags("pages")
    assert (await fetch(app, "/items")).headers["x-yokedcache"] == "MISS"
    assert calls["/items"] == 2


async def test_a_foreign_value_under_the_key_is_a_miss(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    await cache.set(ITEMS_KEY, {"not": "an entry"})
    assert (await fetch(app, "/items")).headers["x-yokedcache"] == "MISS"
    assert (await fetch(app, "/items")).headers["x-yokedcache"] == "HIT"
    assert calls["/items"] == 1


# --- never share a response across users --------------------------------------------------------------------
async def test_set_cookie_responses_are_not_stored(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    responses = await fetch_all(app, "/cookie", 2)
    assert calls["/cookie"] == 2
    assert states(responses) == ["MISS", "MISS"]
    assert all(response.cookies.get("session") == "abc" for response in responses)


@pytest.mark.parametrize(
    "cache_control", ["private", "no-store", "public, no-store", "Private, max-age=60", 'private="x-user"']
)
async def test_private_and_no_store_responses_are_not_stored(cache: YokedCache, cache_control: str) -> None:
    app, calls = make_app(cache)
    responses = await fetch_all(app, "/headers", 2, params={"h": f"cache-control:{cache_control}"})
    assert calls["/headers"] == 2
    assert states(responses) == ["MISS", "MISS"]
    assert responses[0].headers["cache-control"] == cache_control


async def test_vary_star_is_not_stored_but_other_vary_values_are(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    await fetch_all(app, "/headers", 2, params={"h": "vary:*"})
    assert calls["/headers"] == 2
    vary = await fetch_all(app, "/headers", 2, params={"h": "vary:Accept-Language"})
    assert calls["/headers"] == 3  # Vary is not part of the default key
    assert vary[1].headers["vary"] == "Accept-Language"


@pytest.mark.parametrize("credential", [{"authorization": "Bearer alice"}, {"cookie": "session=alice"}])
async def test_credentials_bypass_the_cache(cache: YokedCache, credential: dict[str, str]) -> None:
    app, calls = make_app(cache)
    await fetch(app, "/items")  # an anonymous entry exists ...
    responses = await fetch_all(app, "/items", 2, headers=credential)
    assert states(responses) == ["BYPASS", "BYPASS"]  # ... and is neither served nor replaced
    assert calls["/items"] == 3
    assert [r.json()["calls"] for r in responses] == [2, 3]
    assert (await fetch(app, "/items")).json()["calls"] == 1


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_key_builder_allows_caching_authenticated_requests(
    cache: YokedCache, asynchronous: bool
) -> None:
    def user_key(request: Request) -> str:
        return f"{request.headers.get('authorization', 'anonymous')}:{request.url.path}"

    async def async_user_key(request: Request) -> str:
        return user_key(request)

    app, _ = make_app(cache, key_builder=async_user_key if asynchronous else user_key)
    alice = await fetch_all(app, "/items", 2, headers={"authorization": "alice"})
    bob = await fetch_all(app, "/items", 2, headers={"authorization": "bob"})
    assert states(alice + bob) == ["MISS", "HIT", "MISS", "HIT"]
    assert [r.json()["calls"] for r in alice + bob] == [1, 1, 2, 2]
    assert await cache.exists("http:alice:/items")


async def test_key_builder_may_read_the_body_and_the_app_still_gets_it(cache: YokedCache) -> None:
    async def body_key(request: Request) -> str:
        return "echo:" + hashlib.sha256(await request.body()).hexdigest()

    app, _ = make_app(cache, key_builder=body_key, methods=("POST",))
    first, second = [await fetch(app, "/echo", "POST", content=b"payload") for _ in range(2)]
    assert states([first, second]) == ["MISS", "HIT"]
    assert first.text == f"1:7:{hashlib.sha256(b'payload').hexdigest()}" == second.text


async def test_key_builder_must_return_a_non_empty_string(cache: YokedCache) -> None:
    app, _ = make_app(cache, key_builder=lambda request: "")
    with pytest.raises(CacheKeyError):
        await fetch(app, "/items")


# --- HEAD ---------------------------------------------------------------------------------------------------
async def test_head_is_served_from_the_get_entry_without_a_body(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    get = await fetch(app, "/items")
    head = await fetch(app, "/items", "HEAD")
    assert calls["/items"] == 1
    assert head.headers["x-yokedcache"] == "HIT"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]


async def test_head_miss_is_not_stored(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    head = await fetch(app, "/items", "HEAD")
    assert head.headers["x-yokedcache"] == "MISS"
    assert head.content == b""
    assert not await cache.exists(ITEMS_KEY)
    get = await fetch(app, "/items")
    assert get.headers["x-yokedcache"] == "MISS"
    assert get.json()["calls"] == 2
    assert (await fetch(app, "/items", "HEAD")).headers["x-yokedcache"] == "HIT"
    assert calls["/items"] == 2


# --- ETag and conditional requests --------------------------------------------------------------------------
async def test_etag_is_a_sha256_of_the_body_and_the_same_in_every_process(
    cache_config: dict[str, Any],
) -> None:
    etags: list[str] = []
    for _ in range(2):  # two independent caches, as two processes would have
        other = YokedCache(**{**cache_config, "key_prefix": f"{cache_config['key_prefix']}{len(etags)}"})
        try:
            app, _ = make_app(other)
            miss, hit = await fetch_all(app, "/headers", 2)
            assert miss.headers["etag"] == hit.headers["etag"]
            etags.append(miss.headers["etag"])
        finally:
            await other.flush_all()
            await other.disconnect()
    assert etags[0] == etags[1] == body_etag(b"body")


async def test_app_etag_is_kept(cache: YokedCache) -> None:
    app, _ = make_app(cache)
    miss, hit = await fetch_all(app, "/headers", 2, params={"h": 'etag:W/"v1"'})
    assert miss.headers["etag"] == hit.headers["etag"] == 'W/"v1"'
    not_modified = await fetch(
        app, "/headers", params={"h": 'etag:W/"v1"'}, headers={"if-none-match": '"v1"'}
    )
    assert not_modified.status_code == 304


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", "*", '"other", {etag}', '"a",W/{etag} ,"b"'],
)
async def test_if_none_match_gives_304_on_hit_and_miss(cache: YokedCache, if_none_match: str) -> None:
    app, calls = make_app(cache, cache_control_extra="public")
    header = {"if-none-match": if_none_match.format(etag=body_etag(b"body"))}
    on_miss = await fetch(app, "/headers", headers=header)
    on_hit = await fetch(app, "/headers", headers=header)
    assert calls["/headers"] == 1
    for response, state in ((on_miss, "MISS"), (on_hit, "HIT")):
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == body_etag(b"body")
        assert response.headers["cache-control"].endswith(", public")
        assert response.headers["x-yokedcache"] == state
        assert "content-type" not in response.headers


async def test_non_matching_if_none_match_gets_the_full_response(cache: YokedCache) -> None:
    app, _ = make_app(cache)
    await fetch(app, "/headers")
    response = await fetch(app, "/headers", headers={"if-none-match": '"stale", W/"older"'})
    assert response.status_code == 200
    assert response.text == "body"


# --- Cache-Control, Age and X-YokedCache --------------------------------------------------------------------
async def test_max_age_is_the_ttl_on_a_miss_and_the_remaining_ttl_on_a_hit(cache: YokedCache) -> None:
    app, _ = make_app(cache, ttl=60)
    miss = await fetch(app, "/items")
    assert miss.headers["cache-control"] == "max-age=60"
    assert await cache.expire(ITEMS_KEY, 30)
    hit = await fetch(app, "/items")
    assert hit.headers["cache-control"] == "max-age=30"


async def test_cache_control_extra_is_appended_but_an_app_cache_control_wins(cache: YokedCache) -> None:
    app, _ = make_app(cache, ttl=60, cache_control_extra="public")
    miss, hit = await fetch_all(app, "/items", 2)
    assert miss.headers["cache-control"] == "max-age=60, public"
    assert hit.headers["cache-control"] in ("max-age=60, public", "max-age=59, public")
    own = await fetch_all(app, "/headers", 2, params={"h": "cache-control:public, max-age=5"})
    assert states(own) == ["MISS", "HIT"]
    assert [r.headers["cache-control"] for r in own] == ["public, max-age=5"] * 2


async def test_hits_carry_age_and_misses_do_not(cache: YokedCache) -> None:
    app, _ = make_app(cache)
    miss = await fetch(app, "/items")
    assert "age" not in miss.headers
    entry = await cache.get(ITEMS_KEY)
    entry["created"] = time.time() - 7
    await cache.set(ITEMS_KEY, entry, ttl=60)  # pretend it was stored 7 s ago
    hit = await fetch(app, "/items")
    assert hit.headers["age"] in ("7", "8")
    assert hit.headers["x-yokedcache"] == "HIT"


async def test_hop_by_hop_and_computed_headers_are_not_stored(cache: YokedCache) -> None:
    app, _ = make_app(cache)
    params = {"h": ["keep-alive:timeout=5", "x-custom:kept", "age:100", "x-yokedcache:FAKE"]}
    miss, hit = await fetch_all(app, "/headers", 2, params=params)
    assert hit.headers["x-custom"] == "kept"
    assert "keep-alive" not in hit.headers
    assert hit.headers["age"] in ("0", "1")
    assert hit.headers.get_list("x-yokedcache") == ["HIT"]
    assert miss.headers.get_list("x-yokedcache") == ["MISS"]
    entry = await cache.get("http:GET:http://testserver/headers?" + httpx.QueryParams(params).__str__())
    assert {name for name, _ in entry["headers"]} == {b"content-type", b"x-custom", b"etag"}


# --- paths, statuses, methods ------------------------------------------------------------------------------
async def test_exclude_paths_match_the_prefix_and_its_subpaths_only(cache: YokedCache) -> None:
    app, calls = make_app(cache, exclude_paths=("/admin",))
    admin = await fetch_all(app, "/admin", 2)
    users = await fetch_all(app, "/admin/users", 2)
    other = await fetch_all(app, "/administrator", 2)
    assert (calls["/admin"], calls["/admin/users"], calls["/administrator"]) == (2, 2, 1)
    assert states(admin + users + other) == ["BYPASS"] * 4 + ["MISS", "HIT"]
    assert "etag" not in admin[0].headers


@pytest.mark.parametrize("code", [404, 410, 301])
async def test_non_ok_statuses_are_stored_only_with_cache_non_ok(cache: YokedCache, code: int) -> None:
    app, calls = make_app(cache)
    await fetch_all(app, f"/status/{code}", 2)
    assert calls[f"/status/{code}"] == 2
    app, calls = make_app(cache, cache_non_ok=True)
    responses = await fetch_all(app, f"/status/{code}", 2)
    assert calls[f"/status/{code}"] == 1
    assert [r.status_code for r in responses] == [code, code]
    assert states(responses) == ["MISS", "HIT"]


@pytest.mark.parametrize("code", [201, 206, 500, 503])
async def test_other_statuses_are_never_stored(cache: YokedCache, code: int) -> None:
    app, calls = make_app(cache, cache_non_ok=True)
    await fetch_all(app, f"/status/{code}", 2)
    assert calls[f"/status/{code}"] == 2


async def test_204_is_stored_with_cache_non_ok_and_has_no_content_length(cache: YokedCache) -> None:
    app, calls = make_app(cache, cache_non_ok=True)
    miss, hit = await fetch_all(app, "/empty", 2)
    assert calls["/empty"] == 1
    assert (miss.status_code, hit.status_code) == (204, 204)
    assert "content-length" not in hit.headers
    assert hit.content == b""


async def test_post_is_keyed_by_a_hash_of_its_body(cache: YokedCache) -> None:
    app, calls = make_app(cache, methods=("GET", "POST"))
    same = [await fetch(app, "/echo", "POST", content=b"alpha") for _ in range(2)]
    other = await fetch(app, "/echo", "POST", content=b"beta")
    get = await fetch(app, "/echo")
    assert states([*same, other, get]) == ["MISS", "HIT", "MISS", "MISS"]
    assert calls["/echo"] == 3
    assert same[0].text == same[1].text == f"1:5:{hashlib.sha256(b'alpha').hexdigest()}"
    assert other.text == f"2:4:{hashlib.sha256(b'beta').hexdigest()}"
    assert await cache.exists(f"http:POST:http://testserver/echo:{hashlib.sha256(b'alpha').hexdigest()}")


async def test_post_body_over_the_limit_bypasses_and_reaches_the_app_intact(cache: YokedCache) -> None:
    app, calls = make_app(cache, methods=("POST",), max_body_size=LIMIT)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(BIG), 700):
            yield BIG[start : start + 700]

    responses = [await fetch(app, "/echo", "POST", content=chunks()) for _ in range(2)]
    assert states(responses) == ["BYPASS", "BYPASS"]
    assert calls["/echo"] == 2
    assert responses[1].text == f"2:{len(BIG)}:{hashlib.sha256(BIG).hexdigest()}"


# --- bodies and streaming -----------------------------------------------------------------------------------
async def test_oversized_body_is_delivered_intact_but_not_stored(cache: YokedCache) -> None:
    app, calls = make_app(cache, max_body_size=LIMIT)
    responses = await fetch_all(app, "/big", 2)
    assert calls["/big"] == 2
    assert states(responses) == ["MISS", "MISS"]
    assert all(response.content == BIG for response in responses)


async def test_oversized_stream_is_forwarded_in_order_but_not_stored(cache: YokedCache) -> None:
    app, calls = make_app(cache, max_body_size=LIMIT)
    responses = await fetch_all(app, "/stream", 2, params={"size": "3000"})
    expected = b"".join(str(i).encode() + b"x" * 9 for i in range(300))
    assert calls["/stream"] == 2
    assert states(responses) == ["MISS", "MISS"]
    assert all(response.content == expected for response in responses)


async def test_oversized_stream_is_not_buffered_beyond_the_limit(cache: YokedCache) -> None:
    """Once the held body passes max_body_size, it is forwarded before the app sends the rest."""
    sent: list[dict[str, Any]] = []
    later_chunks_seen_before_forwarding: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"x" * 600, "more_body": True})
            later_chunks_seen_before_forwarding.append(len(sent) == 0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def record(message: Any) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/s", "headers": [], "query_string": b""}
    await HTTPCacheMiddleware(app, cache=cache, max_body_size=LIMIT)(scope, receive, record)
    assert later_chunks_seen_before_forwarding == [True, False, False, False, False]
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"x" * 3000
    assert (b"x-yokedcache", b"MISS") in sent[0]["headers"]


async def test_small_streams_are_stored_whole(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    miss, hit = await fetch_all(app, "/stream", 2)
    assert calls["/stream"] == 1
    assert miss.content == hit.content == b"0xxxxxxxxx1xxxxxxxxx2xxxxxxxxx"
    assert hit.headers["content-length"] == "30"
    assert miss.headers["etag"] == hit.headers["etag"] == body_etag(miss.content)


async def test_event_streams_are_forwarded_not_stored(cache: YokedCache) -> None:
    app, calls = make_app(cache)
    responses = await fetch_all(app, "/events", 2)
    assert calls["/events"] == 2
    assert all(response.text == "data: one\n\ndata: two\n\n" for response in responses)


# --- ASGI scopes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scope",
    [
        {"type": "websocket", "path": "/ws", "headers": [(b"cookie", b"a=b")]},
        {"type": "lifespan"},
        {"type": "http", "method": "DELETE", "path": "/items", "headers": []},
    ],
)
async def test_other_scopes_and_uncached_methods_are_untouched(
    cache: YokedCache, scope: dict[str, Any]
) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        raise AssertionError("the middleware must not read")

    async def send(message: Any) -> None:
        raise AssertionError("the middleware must not send")

    await HTTPCacheMiddleware(inner, cache=cache)(scope, receive, send)
    assert len(seen) == 1
    assert seen[0][0] is scope and seen[0][1] is receive and seen[0][2] is send


# --- cache failures -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fallback", [True, False])
async def test_unreachable_redis_means_pass_through(fallback: bool) -> None:
    dead = YokedCache(
        redis_url="redis://127.0.0.1:1/0",
        connection_timeout=0.2,
        operation_timeout=0.2,
        connection_retries=0,
        fallback_enabled=fallback,
    )
    try:
        app, calls = make_app(dead, tags=("pages",))
        started = time.monotonic()
        responses = await fetch_all(app, "/items", 2)
        post_app, _ = make_app(dead, methods=("POST",))
        posted = await fetch(post_app, "/echo", "POST", content=b"x")
        assert time.monotonic() - started < 5
        assert [r.status_code for r in [*responses, posted]] == [200, 200, 200]
        assert [r.json()["calls"] for r in responses] == [1, 2]
        assert calls["/items"] == 2
        assert states(responses) == (["MISS", "MISS"] if fallback else ["BYPASS", "BYPASS"])
    finally:
        await dead.disconnect()


async def test_responses_are_shared_through_redis_across_instances(redis_url: str, prefix: str) -> None:
    first_cache = YokedCache(redis_url=redis_url, key_prefix=prefix)
    second_cache = YokedCache(redis_url=redis_url, key_prefix=prefix)
    try:
        first_app, first_calls = make_app(first_cache)
        second_app, second_calls = make_app(second_cache)
        miss = await fetch(first_app, "/headers")
        hit = await fetch(second_app, "/headers")
        assert (first_calls["/headers"], second_calls["/headers"]) == (1, 0)
        assert hit.headers["x-yokedcache"] == "HIT"
        assert hit.headers["etag"] == miss.headers["etag"] == body_etag(b"body")
    finally:
        await first_cache.flush_all()
        await first_cache.disconnect()
        await second_cache.disconnect()


def test_constructor_validates_its_arguments() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ValueError):
        HTTPCacheMiddleware(app, cache=YokedCache(), ttl=0)
    with pytest.raises(ValueError):
        HTTPCacheMiddleware(app, cache=YokedCache(), max_body_size=-1)


async def test_commits_retire_responses_built_from_the_tables_they_read(tmp_path: Any) -> None:
    """A cached response depends on the tables the endpoint's SQL read: a commit to one retires it."""
    from fastapi import FastAPI
    from sqlalchemy import Column, Integer, String, create_engine, select
    from sqlalchemy.orm import Session, declarative_base

    base = declarative_base()

    class Item(base):  # type: ignore[valid-type, misc]
        __tablename__ = "yc_http_items"
        id = Column(Integer, primary_key=True)
        name = Column(String)

    engine = create_engine(f"sqlite:///{tmp_path}/items.db")
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Item(id=1, name="first"))
        session.commit()
    calls = 0
    app = FastAPI()

    @app.get("/items")
    def items() -> list[str]:
        nonlocal calls
        calls += 1
        with Session(engine) as session:
            return [item.name for item in session.scalars(select(Item).order_by(Item.id))]

    cache = YokedCache(key_prefix="http-reads")
    app.add_middleware(HTTPCacheMiddleware, cache=cache, ttl=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/items")).json() == ["first"]
        again = await client.get("/items")
        assert again.headers["x-yokedcache"] == "HIT" and calls == 1
        with Session(engine) as session:
            session.add(Item(id=2, name="second"))
            session.commit()
        fresh = await client.get("/items")
    assert fresh.json() == ["first", "second"] and calls == 2
    engine.dispose()
