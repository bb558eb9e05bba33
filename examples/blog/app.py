"""The tutorial's blog as a FastAPI app.

Reads go through ``Depends(cached_get_session)``: the real SQLAlchemy session with query caching on, so
repeated reads send no SQL and any commit that writes ``users`` or ``posts`` invalidates exactly the
cached values that read those tables: session queries, and the ``@cached`` functions and repository
methods too (every cached computation depends on the tables its SQL read). Entries that did not read a
written table stay cached. The repositories' ``create`` methods also invalidate their tags, as in the
tutorial; ``PATCH /users/{id}`` relies on the commit alone.

Run it with ``make serve`` (or ``python examples/demo.py --serve``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

# isort: split
# The tutorial's modules, imported by bare name as the tutorial does (examples/blog is on sys.path).
from cached_queries import cache, get_published_posts, get_user_by_id, get_user_stats
from cached_sessions import cached_get_session
from models import Post, User
from repositories import PostRepository, UserRepository

app = FastAPI(title="yokedcache blog example")

DB = Annotated[Session, Depends(cached_get_session)]


class UserIn(BaseModel):
    username: str
    email: str
    full_name: str | None = None
    is_active: bool = True


class UserPatch(BaseModel):
    full_name: str | None = None
    is_active: bool | None = None


class PostIn(BaseModel):
    title: str
    content: str
    published: bool = False
    author_id: int


def user_out(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "full_name": user.full_name,
        "is_active": user.is_active,
    }


def post_out(post: Post) -> dict[str, Any]:
    return {"id": post.id, "title": post.title, "published": post.published, "author_id": post.author_id}


@app.get("/users")
def list_users(db: DB) -> list[dict[str, Any]]:
    """Every user; cached by the session until a commit writes ``users``."""
    return [user_out(u) for u in db.execute(select(User).order_by(User.id)).scalars()]


@app.get("/users/{user_id}")
async def read_user(user_id: int, db: DB) -> dict[str, Any]:
    user = await UserRepository(db).get_by_id(user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return user_out(user)


@app.post("/users", status_code=201)
async def create_user(body: UserIn, db: DB) -> dict[str, Any]:
    try:
        user = await UserRepository(db).create(body.model_dump())
    except IntegrityError:
        db.rollback()
        raise HTTPException(status_code=409, detail="username or email already taken") from None
    return user_out(user)


@app.patch("/users/{user_id}")
def update_user(user_id: int, body: UserPatch, db: DB) -> dict[str, Any]:
    """An attribute update. No explicit invalidation: the commit invalidates every cached value that read
    ``users`` (``GET /users``, the repository's ``get_by_id``, ``/profile``, ``/stats``), and nothing else."""
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(user, field, value)
    db.commit()
    return user_out(user)


@app.get("/posts")
def list_posts(db: DB) -> list[dict[str, Any]]:
    rows = db.query(Post).filter(Post.published == True).order_by(Post.id).all()  # noqa: E712
    return [post_out(p) for p in rows]


@app.get("/posts/{post_id}")
async def read_post(post_id: int, db: DB) -> dict[str, Any]:
    post = await PostRepository(db).get_by_id(post_id)
    if post is None:
        raise HTTPException(status_code=404, detail="post not found")
    return post_out(post)


@app.post("/posts", status_code=201)
async def create_post(body: PostIn, db: DB) -> dict[str, Any]:
    # SQLite does not enforce the foreign key: check it, so that every database answers the same.
    if db.get(User, body.author_id) is None:
        raise HTTPException(status_code=422, detail="author not found")
    post = await PostRepository(db).create(body.model_dump())
    return post_out(post)


@app.get("/published")
async def published(limit: int = 10) -> list[dict[str, Any]]:
    return await get_published_posts(limit=limit)


@app.get("/profile/{user_id}")
async def profile(user_id: int) -> dict[str, Any]:
    user = await get_user_by_id(user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return user


@app.get("/stats")
async def stats() -> dict[str, Any]:
    """Site statistics (cached 15 minutes) and the cache's own counters."""
    counters = (await cache.get_stats()).to_dict()
    return {"site": await get_user_stats(), "cache": counters}
