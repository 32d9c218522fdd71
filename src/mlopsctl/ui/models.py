"""Pages of the registry: ``/models``, ``/models/<name>`` (versions, aliases, the alias history as a timeline,
gate reports), and the two writes, promote and rollback, which call the same use cases as the CLI (so the
gate applies) and need the token (:func:`mlopsctl.ui.auth.require_write`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, request

from mlopsctl.common import jsonable
from mlopsctl.errors import InvalidInputError
from mlopsctl.services import activity, models
from mlopsctl.ui.app import page, settings, wants_json
from mlopsctl.ui.auth import require_write

bp = Blueprint("models", __name__)


@page(bp, "/models", "models.html")
def models_list() -> dict[str, Any]:
    return {"models": models.list_models(settings())}


@page(bp, "/models/<name>", "model.html")
def model_detail(name: str) -> dict[str, Any]:
    s = settings()
    data = jsonable(models.show_model(s, name))  # stored reports may hold NaN: JSON has no such number
    data["runs"] = {str(k): v for k, v in activity.model_runs(s, data["versions"]).items()}
    data["events"] = models.list_events(s, name, limit=50)[::-1]
    data["default_alias"] = s.registry.alias
    return data


def _inputs() -> dict[str, Any]:
    """The write's fields, from a form or a JSON body."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidInputError("the request body must be a JSON object, as in {\"version\": 2, \"alias\": \"production\"}.")
        return body
    return request.form.to_dict()


def _text(body: dict[str, Any], key: str, limit: int = 500) -> str | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInputError(f"{key} must be text of at most {limit} characters.")
    return value.strip() or None


def _done(name: str, out: dict[str, Any], message: str) -> Any:
    if wants_json():
        return jsonify(out)
    flash(message)
    return redirect(f"/models/{name}", 303)


def _promote(name: str) -> Any:
    require_write()
    body = _inputs()
    version = str(body.get("version", "")).strip()
    if not version.isdigit() or int(version) < 1:
        raise InvalidInputError(f"version {body.get('version')!r} must be a version number such as 2.")
    force = body.get("force") in (True, "1", "true", "on", "yes")
    out = models.promote(settings(), name, int(version), alias=_text(body, "alias", 100), force=force,
                         reason=_text(body, "reason"))
    verdict = "unchanged" if not out["changed"] else ("FORCED past the gate" if out["decision"] == "forced" else "the gate passed")
    return _done(name, out, f"{name}/{version} -> @{out['alias']}: {verdict}.")


def _rollback(name: str) -> Any:
    require_write()
    body = _inputs()
    out = models.rollback(settings(), name, alias=_text(body, "alias", 100), reason=_text(body, "reason"))
    return _done(name, out, f"@{out['alias']} rolled back from version {out['from_version']} to {out['to_version']}.")


for _prefix in ("", "/api"):
    bp.add_url_rule(f"{_prefix}/models/<name>/promote", f"promote{_prefix.replace('/', '_')}", _promote, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/models/<name>/rollback", f"rollback{_prefix.replace('/', '_')}", _rollback, methods=["POST"])
