"""A process that serves no HTTP never imports FastAPI, and FastAPI's ``Depends(Provide[...])`` still wires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_wiring_a_worker_container_imports_no_web_framework() -> None:
    code = (
        "import sys, shared.container\n"
        "shared.container.Container()\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'werkzeug') if m in sys.modules))"
    )
    assert "[]" == run(code)


def test_fastapi_depends_provide_is_injected_when_fastapi_is_imported_after_shared() -> None:
    code = """
import shared.container
from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

class Box(containers.DeclarativeContainer):
    greeting = providers.Object("hello")

app = FastAPI()

@app.get("/")
@inject
async def root(greeting: str = Depends(Provide[Box.greeting])) -> str:
    return greeting

box = Box()
box.wire(modules=[__name__])
print(TestClient(app).get("/").json())
"""
    assert "hello" == run(code)
