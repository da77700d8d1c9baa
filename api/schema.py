"""The OpenAPI document (``openapi.yaml``): served as-is, and the source of
the JSON Schemas request bodies are validated against, so the description
and the validation cannot drift apart."""

import copy
import functools
from pathlib import Path

import yaml
from openapi_schema_validator import OAS31Validator

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")


@functools.cache
def openapi_document() -> dict:
    with OPENAPI_PATH.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def _validator(schema_name: str) -> OAS31Validator:
    components = openapi_document()["components"]
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    return OAS31Validator(copy.deepcopy(root))


def schema_errors(schema_name: str, instance: object) -> list[dict[str, str]]:
    """Every way ``instance`` breaks the named schema, as ``{field, message}``."""
    errors = sorted(
        _validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path)
    )
    return [
        {
            "field": ".".join(str(part) for part in error.absolute_path) or "(body)",
            "message": error.message,
        }
        for error in errors
    ]
