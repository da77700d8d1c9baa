"""API fixtures: tokens, an authenticated JSON client, and a check that every
answer matches the OpenAPI document's schema for its path, method and status."""

import json

import pytest
from django.test import Client
from openapi_schema_validator import OAS31Validator

from api.schema import openapi_document
from api.services import api_token_create


def _resolve(node: dict) -> dict:
    doc = openapi_document()
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def assert_matches_openapi(response, path: str, method: str) -> None:
    """``response`` is declared for ``method path`` and its JSON body fits the schema."""
    operation = openapi_document()["paths"][path][method.lower()]
    declared = operation["responses"]
    status = str(response.status_code)
    assert status in declared, f"{method} {path} answered {status}, not in the document"
    spec = _resolve(declared[status])
    schema = spec["content"]["application/json"]["schema"]
    root = {**schema, "components": openapi_document()["components"]}
    OAS31Validator(root).validate(json.loads(response.content))
    for header in spec.get("headers", {}):
        if header in ("Retry-After", "WWW-Authenticate"):
            assert response.has_header(header), f"{header} missing on {status}"


class ApiClient:
    """A test client that sends JSON with a bearer token."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.secret = secret

    def _headers(self, headers):
        out = dict(headers or {})
        if self.secret is not None:
            out.setdefault("Authorization", f"Bearer {self.secret}")
        return out

    def post(self, path, body=None, *, raw=None, content_type="application/json", headers=None):
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(
            path, data=data, content_type=content_type, headers=self._headers(headers)
        )

    def get(self, path, *, headers=None):
        return self.client.get(path, headers=self._headers(headers))


@pytest.fixture
def api_token(db):
    token, secret = api_token_create(service="billing", description="tests")
    token.secret = secret
    return token


@pytest.fixture
def api(api_token):
    return ApiClient(api_token.secret)
