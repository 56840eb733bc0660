"""The SDK against the wire contract: the generated models are current,
every route the SDK calls is in clients/openapi.json, the sources are
Python 3.9 syntax, and mypy --strict passes."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from replyd import _protocol as proto
from replyd._routes import ROUTES, path

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT.parent / "openapi.json"


@pytest.fixture(scope="module")
def spec() -> Dict[str, Any]:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def test_the_committed_models_are_generated_from_the_spec(spec: Dict[str, Any]) -> None:
    loader = importlib.util.spec_from_file_location("gen_models", ROOT / "scripts" / "gen_models.py")
    assert loader is not None and loader.loader is not None
    gen = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(gen)
    fresh = gen.render(spec)
    committed = (ROOT / "src" / "replyd" / "_models.py").read_text(encoding="utf-8")
    assert fresh == committed, (
        "src/replyd/_models.py differs from clients/openapi.json: "
        "run python scripts/gen_models.py (in clients/python)"
    )


def test_every_route_the_sdk_calls_is_in_the_spec(spec: Dict[str, Any]) -> None:
    paths = spec["paths"]
    for name, route in ROUTES.items():
        assert route.path in paths, f"{name}: {route.path} is not in clients/openapi.json"
        assert route.method.lower() in paths[route.path], (
            f"{name}: {route.method} {route.path} is not in clients/openapi.json"
        )


def test_every_call_uses_its_route_s_path() -> None:
    """Calls name a route of the table and fill in its path (so the table
    is what the SDK really sends)."""
    calls = [
        proto.get("J"), proto.poll("J", '"3"', 30), proto.result("J"), proto.cancel("J"),
        proto.delete("J"), proto.list_jobs("q", None, 5, None), proto.jwks(),
        proto.lease("Q", batch=2, worker=None, lease_seconds=30, wait=1),
        proto.heartbeat("J", "L", None), proto.progress("J", "L", 5, "m"),
        proto.complete("J", "L", {"a": 1}), proto.complete("J", "L", b"raw"),
        proto.fail("J", "L", "boom", code=None, retry=True),
        proto.submit("Q", {}, webhook=None, max_attempts=None, timeout=None, ttl=None,
                     idempotency_key=None, wait=None, traceparent=None, tracestate=None, extra={}),
    ]
    for call in calls:
        assert call.route in ROUTES
        assert call.path == path(call.route, id="J", queue="Q")


def test_sources_are_python_3_9_syntax() -> None:
    for source in sorted((ROOT / "src").rglob("*.py")) + [ROOT / "scripts" / "gen_models.py"]:
        ast.parse(source.read_text(encoding="utf-8"), str(source), feature_version=(3, 9))


@pytest.mark.skipif(shutil.which("mypy") is None and importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (it is pinned in scripts/test-requirements.txt)")
def test_mypy_strict_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "src"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
