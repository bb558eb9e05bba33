"""``YokedCache`` lives in the policy layer; this module keeps the short import path."""

from .policy.cache import YokedCache, get_default_cache, set_default_cache

__all__ = ["YokedCache", "get_default_cache", "set_default_cache"]
