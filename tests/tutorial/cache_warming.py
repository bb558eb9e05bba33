# ruff: noqa
# fmt: off
# cache_warming.py -- the tutorial's file verbatim.
import asyncio
from cached_queries import *

async def warm_user_cache(user_ids: List[int]):
    """Warm cache for specific users"""
    print(f"Warming cache for {len(user_ids)} users...")

    tasks = []
    for user_id in user_ids:
        tasks.append(get_user_by_id(user_id))

    await asyncio.gather(*tasks)
    print("User cache warmed successfully")

async def warm_popular_content():
    """Warm cache for popular content"""
    print("Warming popular content cache...")

    # Warm popular posts
    await get_published_posts(limit=20)

    # Warm user statistics
    await get_user_stats()

    print("Popular content cache warmed successfully")

async def full_cache_warm():
    """Perform full cache warming"""
    print("Starting full cache warming...")

    # Warm user cache for first 50 users
    user_ids = list(range(1, 51))
    await warm_user_cache(user_ids)

    # Warm popular content
    await warm_popular_content()

    print("Full cache warming completed")
