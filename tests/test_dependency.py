"""``cached_dependency``: same-kind wrappers, cached values, and sessions that cache their queries.

The tutorial's Pattern 2 (session dependencies) and Pattern 3 (repositories) run here as written, against the
tutorial's models on a fresh SQLite database.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Dict, List, Optional  # noqa: UP035  (the tutorial's own spelling, kept verbatim)

import pytest
from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, declarative_base, relationship, sessionmaker

from yokedcache import (
    CacheKeyError,
    TableCacheConfig,
    YokedCache,
    cached,
    cached_dependency,
    set_default_cache,
)
from yokedcache.sqlalchemy import is_caching

# --- the tutorial's models.py (declarative_base from sqlalchemy.orm: the ext alias only adds a warning) ----

Base = declarative_base()


class User(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "users"

    id = Column(Integer, primary_key=True, index=True)
    username = Column(String(50), unique=True, index=True)
    email = Column(String(100), unique=True, index=True)
    full_name = Column(String(100))
    is_active = Column(Boolean, default=True)
    created_at = Column(DateTime, default=datetime.utcnow)

    # Relationships
    posts = relationship("Post", back_populates="author")


class Post(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "posts"

    id = Column(Integer, primary_key=True, index=True)
    title = Column(String(200), index=True)
    content = Column(Text)
    published = Column(Boolean, default=False)
    created_at = Column(DateTime, default=datetime.utcnow)

    # Foreign keys
    author_id = Column(Integer, ForeignKey("users.id"))

    # Relationships
    author = relationship("User", back_populates="posts")


SessionLocal = sessionmaker(autocommit=False, autoflush=False)


# Session factory
def get_session():  # type: ignore[no-untyped-def]
    session = SessionLocal()
    try:
        yield session
    finally:
        session.close()


cache: YokedCache  # the tutorial's module-level cache, set by the fixture below


# --- the tutorial's repositories.py -------------------------------------------------------------------------


class BaseRepository:
    def __init__(self, session: Session):
        self.session = session


class UserRepository(BaseRepository):

    @cached(ttl=600, tags=["users"])
    async def get_by_id(self, user_id: int) -> Optional[User]:  # noqa: UP045
        """Get user by ID with caching"""
        return self.session.query(User).filter(User.id == user_id).first()

    @cached(ttl=300, tags=["users"])
    async def get_by_username(self, username: str) -> Optional[User]:  # noqa: UP045
        """Get user by username with caching"""
        return self.session.query(User).filter(User.username == username).first()

    @cached(ttl=180, tags=["users"])
    async def get_active_users(self, limit: int = 50) -> List[User]:  # noqa: UP006
        """Get active users with caching"""
        return (self.session.query(User)
                .filter(User.is_active == True)  # noqa: E712
                .limit(limit)
                .all())

    async def create(self, user_data: Dict[str, Any]) -> User:  # noqa: UP006
        """Create user and invalidate cache"""
        user = User(**user_data)
        self.session.add(user)
        await self.session.commit()

        # Invalidate user-related cache
        await cache.invalidate_tags(["users"])

        return user


class PostRepository(BaseRepository):

    @cached(ttl=300, tags=["posts"])
    async def get_by_id(self, post_id: int) -> Optional[Post]:  # noqa: UP045
        """Get post by ID with caching"""
        return self.session.query(Post).filter(Post.id == post_id).first()

    @cached(ttl=180, tags=["posts"])
    async def get_published(self, limit: int = 10) -> List[Post]:  # noqa: UP006
        """Get published posts with caching"""
        return (self.session.query(Post)
                .filter(Post.published == True)  # noqa: E712
                .order_by(Post.created_at.desc())
                .limit(limit)
                .all())

    async def create(self, post_data: Dict[str, Any]) -> Post:  # noqa: UP006
        """Create post and invalidate cache"""
        post = Post(**post_data)
        self.session.add(post)
        await self.session.commit()

        # Invalidate post-related cache
        await cache.invalidate_tags(["posts"])

        return post


# --- fixtures -----------------------------------------------------------------------------------------------


class Tutorial:
    """The tutorial's database and cache, plus a statement counter."""

    def __init__(self, engine: Any, the_cache: YokedCache) -> None:
        self.engine = engine
        self.cache = the_cache
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda c, cur, st, *a: self.statements.append(st))

    def sql(self) -> int:
        count = len(self.statements)
        self.statements.clear()
        return count


@pytest.fixture
def tutorial(tmp_path: Any, cache_config: dict[str, Any]) -> Iterator[Tutorial]:
    global cache
    engine = create_engine(f"sqlite:///{tmp_path}/tutorial.db")
    Base.metadata.create_all(bind=engine)
    SessionLocal.configure(bind=engine)
    with SessionLocal() as session:
        alice = User(username="alice", email="a@example.com", full_name="Alice")
        bob = User(username="bob", email="b@example.com", full_name="Bob", is_active=False)
        session.add_all([alice, bob])
        session.add(Post(title="Hello", content="hi", published=True, author=alice))
        session.commit()
    cache = YokedCache(**cache_config, tables={"users": TableCacheConfig(ttl=900)})
    set_default_cache(cache)
    yield Tutorial(engine, cache)
    set_default_cache(None)
    cache.flush_all_sync()
    cache.disconnect_sync()
    engine.dispose()


def pattern_2() -> tuple[Any, Any, Any]:
    """The tutorial's cached_sessions.py, verbatim."""
    # Create cached session dependency
    cached_get_session = cached_dependency(
        get_session,
        cache=cache,
        ttl=300,  # 5 minutes default
        table_name="auto_detect"  # Auto-detect table names from queries
    )

    # Table-specific cached sessions
    users_cached_session = cached_dependency(
        get_session,
        cache=cache,
        ttl=600,  # 10 minutes for user queries
        table_name="users"
    )

    posts_cached_session = cached_dependency(
        get_session,
        cache=cache,
        ttl=180,  # 3 minutes for post queries
        table_name="posts"
    )
    return cached_get_session, users_cached_session, posts_cached_session


def use(dependency: Any) -> Iterator[Any]:
    """Drive a generator dependency the way FastAPI does: next(), then next() again for teardown."""
    gen = dependency()
    value = next(gen)
    try:
        yield value
    finally:
        with pytest.raises(StopIteration):
            next(gen)


# --- Pattern 2 ----------------------------------------------------------------------------------------------


def test_pattern_2_sessions_cache_queries_and_commits_invalidate(tutorial: Tutorial) -> None:
    cached_get_session, _, _ = pattern_2()
    for _ in range(2):
        for db in use(cached_get_session):
            assert [u.username for u in db.query(User).order_by(User.id).all()] == ["alice", "bob"]
            assert db.query(Post).count() == 1
    assert tutorial.sql() == 2
    for db in use(cached_get_session):
        db.add(User(username="carol", email="c@example.com"))
        db.commit()
    for db in use(cached_get_session):
        db.query(User).filter(User.username == "bob").first().full_name = "Robert"
        db.commit()
    for db in use(cached_get_session):
        user = db.query(User).filter(User.username == "bob").first()
        user.full_name = "rolled back"
        db.rollback()
    tutorial.sql()
    for db in use(cached_get_session):
        users = db.query(User).order_by(User.id).all()
        assert [(u.username, u.full_name) for u in users] == [
            ("alice", "Alice"),
            ("bob", "Robert"),
            ("carol", None),
        ]
        assert db.query(Post).count() == 1  # posts were not written: still a hit
    assert tutorial.sql() == 1


def test_pattern_2_table_specific_sessions(tutorial: Tutorial) -> None:
    _, users_cached_session, posts_cached_session = pattern_2()
    for _ in range(2):
        for db in use(users_cached_session):
            db.query(User).all()
            db.query(Post).all()  # not a users query: never cached by this dependency
    assert tutorial.sql() == 3
    keys = [k for k in tutorial.cache.get_all_keys_sync() if k.startswith("sql:")]
    assert len(keys) == 1
    meta = tutorial.cache.get_meta_sync(keys[0])
    assert meta is not None and 590 < meta["ttl"] <= 600  # the dependency's ttl beats the table's 900
    for db in use(posts_cached_session):
        db.query(Post).all()
        db.query(Post).all()
    assert tutorial.sql() == 1
    for db in use(posts_cached_session):
        db.query(User).filter(User.id == 1).one().full_name = "renamed"  # a users write...
        db.commit()
    for db in use(users_cached_session):
        assert db.query(User).filter(User.id == 1).one().full_name == "renamed"  # ...seen everywhere


def test_session_dependency_yields_the_real_session_and_cleans_up(tutorial: Tutorial) -> None:
    cached_get_session, _, _ = pattern_2()
    assert inspect.isgeneratorfunction(cached_get_session)
    assert inspect.signature(cached_get_session) == inspect.signature(get_session)
    assert cached_get_session.__wrapped__ is get_session
    gen = cached_get_session()
    db = next(gen)
    assert type(db) is SessionLocal.class_ and is_caching(db)
    assert "commit" in vars(db)
    with pytest.raises(StopIteration):
        next(gen)
    assert not is_caching(db) and "commit" not in vars(db)


def test_sync_session_methods_work_with_and_without_await(tutorial: Tutorial) -> None:
    cached_get_session, _, _ = pattern_2()

    async def scenario() -> None:
        for db in use(cached_get_session):
            db.add(User(username="dan", email="d@example.com"))
            await db.flush()
            db.commit()
            user = db.query(User).filter(User.username == "dan").one()
            user.full_name = "Dan"
            await db.commit()
            await db.refresh(user)
            db.refresh(user)
            await db.rollback()
            await db.close()

    gc.collect()  # other tests' garbage must not be collected inside the block below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    with SessionLocal() as plain:
        assert plain.query(User).filter(User.username == "dan").one().full_name == "Dan"


def test_errors_are_thrown_into_the_generator_and_the_session_is_closed_once(tutorial: Tutorial) -> None:
    events: list[str] = []

    def get_db() -> Iterator[Session]:
        session = SessionLocal()
        closes = session.close

        def counting_close() -> None:
            events.append("close")
            closes()

        session.close = counting_close  # type: ignore[method-assign]
        try:
            yield session
        except ValueError:
            session.rollback()
            events.append("rollback")
            raise
        finally:
            session.close()

    dependency = cached_dependency(get_db, cache=tutorial.cache)
    gen = dependency()
    db = next(gen)
    db.add(User(username="ghost", email="g@example.com"))
    db.flush()
    with pytest.raises(ValueError, match="boom"):
        gen.throw(ValueError("boom"))
    assert events == ["rollback", "close"]
    with SessionLocal() as plain:
        assert plain.query(User).filter(User.username == "ghost").first() is None


def test_a_generator_that_swallows_the_error_ends_normally(tutorial: Tutorial) -> None:
    def forgiving() -> Iterator[Session]:
        session = SessionLocal()
        try:
            yield session
        except KeyError:
            pass
        finally:
            session.close()

    gen = cached_dependency(forgiving, cache=tutorial.cache)()
    next(gen)
    with pytest.raises(StopIteration):
        gen.throw(KeyError("ignored"))


async def test_async_generator_yielding_an_async_session(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda c, cur, st, *a: statements.append(st))

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(engine) as session:
            yield session

    dependency = cached_dependency(get_async_session, cache=cache)
    assert inspect.isasyncgenfunction(dependency)
    for _ in range(2):
        gen = dependency()
        db = await gen.__anext__()
        assert isinstance(db, AsyncSession) and "commit" not in vars(db)
        await db.execute(User.__table__.select())
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
    assert len(statements) == 1
    await engine.dispose()


async def test_async_generator_errors_reach_the_users_generator(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/e.db")
    events: list[str] = []

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        session = AsyncSession(engine)
        try:
            yield session
        except ValueError:
            events.append("rollback")
            await session.rollback()
            raise
        finally:
            events.append("close")
            await session.close()

    gen = cached_dependency(get_async_session, cache=cache)()
    db = await gen.__anext__()
    with pytest.raises(ValueError, match="endpoint"):
        await gen.athrow(ValueError("endpoint"))
    assert events == ["rollback", "close"] and not is_caching(db)
    await engine.dispose()


def test_a_plain_function_returning_a_session(tutorial: Tutorial) -> None:
    dependency = cached_dependency(lambda: SessionLocal(), cache=tutorial.cache)
    for _ in range(2):
        with dependency() as db:
            db.query(User).all()
    assert tutorial.sql() == 1


# --- other dependencies: values cached by their arguments --------------------------------------------------


def test_values_are_cached_by_arguments(cache: YokedCache) -> None:
    calls: list[Any] = []

    def settings(region: str, limit: int = 10) -> dict[str, Any]:
        calls.append((region, limit))
        return {"region": region, "limit": limit, "at": datetime(2024, 1, 1)}

    dependency = cached_dependency(settings, cache=cache, tags=["settings"])
    assert not inspect.iscoroutinefunction(dependency)
    assert inspect.signature(dependency) == inspect.signature(settings)
    expected = {"region": "eu", "limit": 10, "at": datetime(2024, 1, 1)}
    assert dependency("eu") == dependency("eu", limit=10) == expected
    dependency("us")
    assert calls == [("eu", 10), ("us", 10)]
    keys = cache.get_all_keys_sync()
    segment = f"dep:{__name__}.test_values_are_cached_by_arguments.<locals>.settings:"
    assert all(k.startswith(segment) for k in keys)
    cache.invalidate_tags_sync("settings")
    dependency("eu")
    assert len(calls) == 3


async def test_async_values_and_table_settings(cache_config: dict[str, Any]) -> None:
    the_cache = YokedCache(**cache_config, tables={"plans": TableCacheConfig(ttl=77, tags={"billing"})})
    calls = 0

    async def plan(customer_id: int) -> str:
        nonlocal calls
        calls += 1
        return f"plan-{customer_id}"

    dependency = cached_dependency(plan, cache=the_cache, table_name="plans")
    assert inspect.iscoroutinefunction(dependency)
    assert await dependency(1) == await dependency(1) == "plan-1"
    assert calls == 1
    (key,) = await the_cache.get_all_keys()
    meta = await the_cache.get_meta(key)
    assert meta is not None and meta["tags"] == ["billing", "table:plans"] and 70 <= meta["ttl"] <= 77
    await the_cache.invalidate_tags("table:plans")
    await dependency(1)
    assert calls == 2
    await the_cache.flush_all()
    await the_cache.disconnect()


def test_generator_values_skip_setup_and_teardown_on_a_hit(cache: YokedCache) -> None:
    events: list[str] = []

    def client(name: str) -> Iterator[str]:
        events.append("setup")
        try:
            yield f"client:{name}"
        finally:
            events.append("teardown")

    dependency = cached_dependency(client, cache=cache)
    for _ in range(2):
        for value in use(lambda: dependency("x")):
            assert value == "client:x"
    assert events == ["setup", "teardown"]


async def test_async_generator_values(cache: YokedCache) -> None:
    events: list[str] = []

    async def token(scope: str) -> AsyncIterator[str]:
        events.append("setup")
        yield f"token:{scope}"
        events.append("teardown")

    dependency = cached_dependency(token, cache=cache)
    for _ in range(2):
        gen = dependency("read")
        assert await gen.__anext__() == "token:read"
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
    assert events == ["setup", "teardown"]


def test_unstable_arguments_are_refused_before_the_dependency_runs(cache: YokedCache) -> None:
    ran = []

    def needs(thing: object) -> int:
        ran.append(thing)
        return 1

    dependency = cached_dependency(needs, cache=cache)
    dependency(1)
    with pytest.raises(CacheKeyError):
        dependency(object())
    assert ran == [1]


def test_negative_ttl_is_refused() -> None:
    with pytest.raises(ValueError):
        cached_dependency(get_session, ttl=-1)


# --- Pattern 3 -------------------------------------------------------------------------------------------


def test_pattern_3_repositories(tutorial: Tutorial) -> None:
    cached_get_session, _, _ = pattern_2()

    async def scenario() -> None:
        for db in use(cached_get_session):
            users, posts = UserRepository(db), PostRepository(db)
            alice = await users.get_by_id(1)
            assert isinstance(alice, User) and alice.username == "alice"
            assert (await posts.get_by_id(1)).title == "Hello"
            assert [u.username for u in await users.get_active_users()] == ["alice"]
            tutorial.sql()
            assert (await users.get_by_id(1)).email == "a@example.com"
            assert (await users.get_by_username("alice")).id == 1
            assert len(await posts.get_published()) == 1
            assert tutorial.sql() == 2  # get_by_username and get_published were first calls
            await users.create({"username": "carol", "email": "c@example.com"})
            await posts.create({"title": "Second", "content": "more", "published": True, "author_id": 1})
            assert [u.username for u in await users.get_active_users()] == ["alice", "carol"]
            assert [p.title for p in await posts.get_published()] == ["Second", "Hello"]

    asyncio.run(scenario())
