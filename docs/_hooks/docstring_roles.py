"""Build hook: adapt docstrings written for readers of the source to the published site.

* Sphinx-style roles (``:class:`CacheConfig```) become plain code: only the name in code font remains.
* References to numbered sections of the specification (``see API §12``) become links to the guide page
  that covers the subject.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.utils import get_relative_url

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj|const):(?=<code>)")
_SECTION = re.compile(r"\b(see|See) API(?:\.md)? §(\d+)(?:\.(\d+))?(?: for [a-z ]+)?")

# section (or section.subsection) -> (page, title)
_GUIDES = {
    "3": ("api.md", "API reference"),
    "4": ("configuration.md", "configuration guide"),
    "5": ("concepts.md", "concepts guide"),
    "6": ("concepts.md", "concepts guide"),
    "7": ("invalidation.md", "invalidation guide"),
    "8": ("decorators.md", "@cached guide"),
    "8.2": ("sqlalchemy.md", "SQLAlchemy guide"),
    "9": ("decorators.md", "@cached guide"),
    "10": ("monitoring.md", "monitoring guide"),
    "12": ("http.md", "HTTP middleware guide"),
    "13": ("backends.md", "backends guide"),
    "14": ("resilience.md", "resilience guide"),
    "15": ("monitoring.md", "monitoring guide"),
    "16": ("cli.md", "command-line guide"),
}


def _link(match: re.Match[str], page: Any) -> str:
    section, sub = match[2], match[3]
    guide = _GUIDES.get(f"{section}.{sub}") if sub else None
    guide = guide or _GUIDES.get(section)
    if guide is None:
        return match[0]
    target, title = guide
    href = get_relative_url(target.replace(".md", "/"), page.url)
    return f'{match[1]} the <a href="{href}">{title}</a>'


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    html = _ROLE.sub("", html)
    return _SECTION.sub(lambda match: _link(match, page), html)
