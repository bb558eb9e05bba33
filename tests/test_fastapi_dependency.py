"""A real FastAPI app using the tutorial's ``cached_get_session`` through ``Depends``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import Column, Integer, String, create_engine, event, select
from sqlalchemy.orm import Session, declarative_base, sessionmaker

from yokedcache import YokedCache, cached_dependency

Base = declarative_base()


class Item(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "yc_api_items"
    id = Column(Integer, primary_key=True)
    name = Column(String(50))


class App:
    """The app, its database, and what the session generator did."""

    def __init__(self, url: str, cache: YokedCache) -> None:
        self.engine = create_engine(url)
        Base.metadata.create_all(self.engine)
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", lambda c, cur, st, *a: self.statements.append(st))
        self.events: list[str] = []
        SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=self.engine)

        def get_session() -> Iterator[Session]:
            session = SessionLocal()
            try:
                yield session
            except Exception:
                self.events.append("rollback")
                session.rollback()
                raise
            finally:
                self.events.append("close")
                session.close()

        cached_get_session = cached_dependency(get_session, cache=cache, ttl=300, table_name="auto_detect")
        self.app = app = FastAPI()

        @app.get("/items")
        async def list_items(db: Session = Depends(cached_get_session)) -> list[str]:  # noqa: B008
            return [item.name for item in db.execute(select(Item).order_by(Item.id)).scalars()]

        @app.post("/items")
        async def add_item(name: str, db: Session = Depends(cached_get_session)) -> dict[str, Any]:  # noqa: B008
            item = Item(name=name)
            db.add(item)
            await db.commit()  # a sync session, awaited: the repository style of the tutorial
            return {"id": item.id}

        @app.post("/broken")
        async def broken(db: Session = Depends(cached_get_session)) -> None:  # noqa: B008
            db.add(Item(name="half-written"))
            db.flush()
            raise RuntimeError("the endpoint failed")

        @app.post("/refused")
        async def refused(db: Session = Depends(cached_get_session)) -> None:  # noqa: B008
            db.add(Item(name="refused"))
            db.flush()
            raise HTTPException(status_code=409, detail="conflict")

    def sql(self) -> int:
        count = len(self.statements)
        self.statements.clear()
        return count


@pytest.fixture
async def api(tmp_path: Any, cache: YokedCache) -> AsyncIterator[tuple[App, httpx.AsyncClient]]:
    application = App(f"sqlite:///{tmp_path}/api.db", cache)
    transport = httpx.ASGITransport(app=application.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield application, client
    application.engine.dispose()


async def test_get_twice_sends_one_statement_and_post_is_seen(api: tuple[App, httpx.AsyncClient]) -> None:
    app, client = api
    for _ in range(2):
        response = await client.get("/items")
        assert response.status_code == 200 and response.json() == []
    assert app.sql() == 1
    created = await client.post("/items", params={"name": "first"})
    assert created.status_code == 200 and created.json() == {"id": 1}
    assert (await client.get("/items")).json() == ["first"]
    assert (await client.get("/items")).json() == ["first"]
    assert app.sql() == 3  # the insert, reloading item.id after commit, then one read
    assert app.events.count("close") == 5 and "rollback" not in app.events


@pytest.mark.parametrize("path, status", [("/broken", 500), ("/refused", 409)])
async def test_a_failing_endpoint_rolls_back_through_the_users_generator(
    api: tuple[App, httpx.AsyncClient], path: str, status: int
) -> None:
    app, client = api
    assert (await client.get("/items")).json() == []
    response = await client.post(path)
    assert response.status_code == status
    assert app.events[-2:] == ["rollback", "close"]
    assert (await client.get("/items")).json() == []
