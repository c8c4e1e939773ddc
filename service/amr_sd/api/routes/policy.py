"""GET|POST /v1/policy: the full-weight version in service, and loading new weights."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from amr_client.schemas import PolicyStatus, PolicyUpdate
from amr_sd.api.http_common import RuntimeDep, errors, json_response, request_timeout

router = APIRouter()


@router.post("/v1/policy", response_model=PolicyStatus, responses=errors(401, 403, 422, 500, 503, 504))
async def set_policy(body: PolicyUpdate, runtime: RuntimeDep,
                     x_request_timeout: Annotated[str | None, Header(
                         description="Seconds the reload may wait for requests in flight "
                                     "(default: the request timeout); past it: 504, weights "
                                     "unchanged.")] = None):
    """Load new full weights into the running engine; later requests report `version`."""
    status = await runtime.set_policy(body, request_timeout(x_request_timeout, runtime.settings))
    return json_response(status.model_dump(mode="json"))


@router.get("/v1/policy", response_model=PolicyStatus, responses=errors(401, 403, 503))
async def get_policy(runtime: RuntimeDep):
    """The full-weight version in service, and the LoRA adapters loaded."""
    status = await runtime.get_policy()
    return json_response(status.model_dump(mode="json"))
