"""HTTP on the worker's web port: health, metrics, and per-user views routed to the owner.

Faust's table routing forwards a user's request to the worker that owns the user's
partition, so any worker answers for any user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.decay import LONG, SHORT
from stream.core.interest import UserState, category_strengths, interest_vector, item_strengths
from stream.worker import metrics


def _json(view: View, body: Any, status: int = 200) -> Response:
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status)


def _ranked(values: dict[str, float]) -> list[dict[str, Any]]:
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return [{"name": k, "strength": round(v, 6)} for k, v in ordered]


def interest_body(state: UserState, at_ms: int | None, vectors: bool) -> dict[str, Any]:
    """A user's state as the HTTP view shows it: strengths at the request time."""
    t = max(at_ms or 0, state.t_ref or 0)
    body: dict[str, Any] = {
        "user_id": state.user_id,
        "at": t,
        "t_ref": state.t_ref,
        "events_applied": state.events_applied,
        "type_counts": dict(state.type_counts),
        "model_version": state.model_version,
        "recent_events": [  # oldest first, at most INTEREST_SEQUENCE_LENGTH
            {"item_id": i, "type": k, "ts": ts}
            for ts, i, k in zip(
                state.sequence.ts, state.sequence.item, state.sequence.type, strict=True
            )
        ],
    }
    for name, horizon in (("short", SHORT), ("long", LONG)):
        body[name] = {
            "categories": [
                {"category": c["name"], "strength": c["strength"]}
                for c in _ranked(category_strengths(state, horizon, t))
            ],
            "items": [
                {"item_id": c["name"], "strength": c["strength"]}
                for c in _ranked(item_strengths(state, horizon, t))
            ],
        }
        if vectors:
            vec = interest_vector(state, horizon, t)
            body[name]["vector"] = None if vec is None else [round(float(x), 6) for x in vec]
    return body


def register_views(
    app: faust.App,
    states: faust.Table,
    published: faust.Table,
    *,
    health: Callable[[], dict[str, Any]],
    read_state: Callable[[str], UserState | None],
    trending: Callable[[], Mapping[str, Any]],
) -> None:
    """The worker's HTTP views; each reads what it is given, not the worker's internals."""

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return _json(self, {"status": "ok", **health()})

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0]
            )

    @app.page("/trending/{category}")
    class Trending(View):
        """This worker's local view of a category's trending items (no routing: every
        worker follows every category)."""

        async def get(self, request: Request, category: str) -> Response:
            snap = trending().get(category)
            if snap is None:
                return _json(self, {"error": f"no trending items for {category!r}"}, status=404)
            return _json(self, snap)

    @app.page("/users/{user_id}/interest")
    class UserInterest(View):
        @app.table_route(table=states, match_info="user_id")
        async def get(self, request: Request, user_id: str) -> Response:
            state = read_state(user_id)  # folded events not yet flushed included
            if state is None:
                return _json(self, {"error": f"unknown user {user_id!r}"}, status=404)
            at = request.query.get("at")
            at_ms = int(at) if at and at.isdigit() else int(time.time() * 1000)
            vectors = request.query.get("vectors", "").lower() in ("1", "true", "yes")
            return _json(self, interest_body(state, at_ms, vectors))

    @app.page("/users/{user_id}/recommendations")
    class UserRecommendations(View):
        @app.table_route(table=published, match_info="user_id")
        async def get(self, request: Request, user_id: str) -> Response:
            raw = published.get(user_id.encode())
            if raw is None:
                return _json(self, {"error": f"no recommendations for {user_id!r} yet"}, status=404)
            return self.bytes(raw, content_type="application/json")
