"""`makemore serve`: a local web page and JSON API to generate, score, train, inspect and compare runs.

Needs the serve extra (`pip install "makemore[serve]"`): FastAPI and uvicorn. `create_app(runs)` builds the app.
"""

from __future__ import annotations

from makemore.serve.app import create_app

__all__ = ["create_app"]
