"""The model catalog, for operators: /v1/catalog/models (contracts/openapi/control.yaml)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.deps import get_services, require_json
from orchestratord.api.responses import errors_for
from orchestratord.api.schemas import Text
from orchestratord.catalog import CatalogEntry
from orchestratord.services import Services

router = APIRouter(tags=["catalog"])
ServicesDep = Annotated[Services, Depends(get_services)]
ModelId = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:@+-]+$")]
State = Literal["Active", "Deprecated", "Retired"]
Tag = Annotated[str, Field(min_length=1, max_length=64)]


class CatalogEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:@+-]+$")
    digest: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    source: Text = Field(min_length=1, max_length=4096)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    state: State = "Active"


class CatalogStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    state: State


class CatalogModel(BaseModel):
    id: str
    digest: str
    source: str
    tags: list[str]
    state: State
    trust: Literal["unverified", "trusted", "untrusted"]
    observed_digest: str | None
    verified_at: str | None
    created_at: str
    updated_at: str


class CatalogList(BaseModel):
    models: list[CatalogModel]


def _out(entry: CatalogEntry) -> CatalogModel:
    return CatalogModel(
        id=entry.id,
        digest=entry.digest,
        source=entry.source,
        tags=list(entry.tags),
        state=entry.state,
        trust=entry.trust,
        observed_digest=entry.observed_digest,
        verified_at=None if entry.verified_at is None else _iso(entry.verified_at),
        created_at=_iso(entry.created_at),
        updated_at=_iso(entry.updated_at),
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@router.post(
    "/v1/catalog/models",
    status_code=201,
    response_model=CatalogModel,
    responses=errors_for(400, 409, 415),
    dependencies=[Depends(require_json)],
    operation_id="createCatalogModel",
)
async def create_model(body: CatalogEntryIn, services: ServicesDep) -> CatalogModel:
    entry = await services.control.catalog.add(body.id, body.digest, body.source, body.tags, body.state)
    return _out(entry)


@router.get("/v1/catalog/models", response_model=CatalogList, operation_id="listCatalogModels")
async def list_models(services: ServicesDep) -> CatalogList:
    return CatalogList(models=[_out(e) for e in services.control.catalog.list()])


@router.get(
    "/v1/catalog/models/{model_id}",
    response_model=CatalogModel,
    responses=errors_for(400, 404),
    operation_id="getCatalogModel",
)
async def get_model(model_id: ModelId, services: ServicesDep) -> CatalogModel:
    return _out(services.control.catalog.get(model_id))


@router.delete(
    "/v1/catalog/models/{model_id}",
    status_code=204,
    response_class=Response,
    responses=errors_for(400, 404),
    operation_id="deleteCatalogModel",
)
async def delete_model(model_id: ModelId, services: ServicesDep) -> Response:
    await services.control.catalog.delete(model_id)
    return Response(status_code=204)


@router.post(
    "/v1/catalog/models/{model_id}/verify",
    response_model=CatalogModel,
    responses=errors_for(400, 404, 409),
    operation_id="verifyCatalogModel",
)
async def verify_model(model_id: ModelId, services: ServicesDep) -> CatalogModel:
    """Hash the local artifact (SHA-256) and compare; a mismatch marks the entry untrusted."""
    return _out(await services.control.catalog.verify(model_id))


@router.post(
    "/v1/catalog/models/{model_id}/state",
    response_model=CatalogModel,
    responses=errors_for(400, 404, 415),
    dependencies=[Depends(require_json)],
    operation_id="setCatalogModelState",
)
async def set_state(model_id: ModelId, body: CatalogStateIn, services: ServicesDep) -> CatalogModel:
    return _out(await services.control.catalog.set_state(model_id, body.state))
