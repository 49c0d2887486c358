"""Validate built Kubernetes manifests; run with the validators' venv (.venv-deploy).

    validate.py MANIFESTS.yaml CRD_DIR VERSION [VERSION ...]

Built-in kinds are checked by kubernetes-validate (strict: unknown fields are errors) against
each Kubernetes version's OpenAPI schemas; custom resources against the openAPIV3Schema of
their published CRDs in CRD_DIR (``*.yaml.gz``), made strict the same way (an object that
lists its properties and does not preserve unknown fields admits no others). Prints one JSON
object: ``{"checked": [[kind, name, against], ...], "errors": [message, ...]}``.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` where the API server would prune."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the version's schema, for every served version of every CRD."""
    schemas = {}
    for path in sorted(directory.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main() -> int:
    manifests, crd_dir, *versions = sys.argv[1:]
    documents = [d for d in yaml.safe_load_all(Path(manifests).read_text()) if d]
    custom = crd_schemas(Path(crd_dir))
    checked: list[list[str]] = []
    errors: list[str] = []
    for document in documents:
        kind, name = document["kind"], document["metadata"]["name"]
        key = (document["apiVersion"], kind)
        if key in custom:
            validator = jsonschema.Draft7Validator(custom[key])
            for error in validator.iter_errors(document):
                where = "/".join(map(str, error.absolute_path))
                errors.append(f"{kind}/{name}: {where}: {error.message}")
            checked.append([kind, name, "crd"])
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "/".join(map(str, error.path))
                errors.append(f"{kind}/{name} on {version}: {where}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{kind}/{name}: no schema for {key} in Kubernetes {version}")
            checked.append([kind, name, version])
    print(json.dumps({"checked": checked, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
