"""The OpenAPI document is valid, served, and describes exactly the routes."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver
from openapi_spec_validator import validate

from api.schema import openapi_document

pytestmark = pytest.mark.django_db


def test_the_document_is_a_valid_openapi_3_description():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_the_app_serves_the_document():
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == openapi_document()


def _api_routes() -> dict[str, set[str]]:
    """``{"/messages/{id}": {"get"}, ...}`` from the URLconf (under /api/v1)."""
    api = next(p for p in get_resolver().url_patterns if str(p.pattern) == "api/")
    routes = {}
    for pattern in api.url_patterns:
        methods = getattr(pattern.callback, "allowed_methods", None)
        if not isinstance(pattern, URLPattern) or methods is None:
            continue  # the document itself and the JSON 404 for other paths
        route = str(pattern.pattern).removeprefix("v1")
        route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        routes[route] = {m.lower() for m in methods}
    return routes


def test_the_document_and_the_routes_match():
    doc = openapi_document()
    described = {
        path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
        for path, item in doc["paths"].items()
    }
    assert doc["servers"] == [{"url": "/api/v1"}]
    assert _api_routes() == described


def test_undocumented_methods_are_refused_on_every_path():
    client = Client()
    for path, item in openapi_document()["paths"].items():
        url = "/api/v1" + path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                continue
            response = getattr(client, method)(url)
            # Unauthenticated: the method check comes first and says so.
            assert response.status_code == 405, (method, path)
