"""Images inside one self-contained HTML page: the ingest data report and the
evaluation report both inline theirs, so that MLflow, KFP and a mail show each page as
one file."""

from __future__ import annotations

import base64
import html


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...``: the image itself as an address; '' for no bytes."""
    return f"data:{mime};base64," + base64.b64encode(data).decode() if data else ""


def img_tag(src: str, title: str) -> str:
    """An ``<img>`` of ``src`` titled ``title``; a "[no preview]" placeholder where there
    is no image."""
    if not src:
        return f"<span title='{html.escape(title)}'>[no preview]</span>"
    return f"<img src='{src}' title='{html.escape(title)}' alt='{html.escape(title)}'>"
