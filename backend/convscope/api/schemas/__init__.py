"""The API's pydantic models, one module per resource; they make `/openapi.json` and `/docs`
describe every endpoint, and the CLI's `--json` output is made from the same models so the
two cannot drift. Everything is re-exported here (`from convscope.api.schemas import X`)."""

from convscope.api.schemas.analyses import (
    CorrespondenceRequest,
    CorrespondenceResponse,
    DeadChannelsRequest,
    DeadChannelsResponse,
    FiltersReportResponse,
    FiltersResponse,
    FrequencyResponse,
    InvarianceRequest,
    InvarianceResponse,
)
from convscope.api.schemas.common import EngineMemory, ErrorResponse, HealthResponse
from convscope.api.schemas.featvis import AtlasInfo, StoredUnit, VisualizationRequest
from convscope.api.schemas.images import ActivationsResponse, SampleInfo, SpriteInfo, UploadResponse
from convscope.api.schemas.jobs import JobError, JobResponse
from convscope.api.schemas.models import (
    LabelInfo,
    LayerResponse,
    ModelInfo,
    PredictionResponse,
    Preprocessing,
    ReceptiveFieldInfo,
    RuleCoverage,
)
from convscope.api.schemas.occlusion import (
    OcclusionFeature,
    OcclusionReference,
    OcclusionRequest,
    OcclusionResponse,
)
from convscope.api.schemas.projections import ProjectionItem, ProjectionSeed, ProjectionsRequest
from convscope.api.schemas.scans import ScanInfo, ScanProgress, ScanRequest, ScanRootInfo
from convscope.api.schemas.studies import DigitsRunRequest, StudyList, StudySummary
from convscope.api.schemas.topk import ScanImageRef, TopEntry, TopProjection, TopResponse

__all__ = [
    "ActivationsResponse",
    "AtlasInfo",
    "CorrespondenceRequest",
    "CorrespondenceResponse",
    "DeadChannelsRequest",
    "DeadChannelsResponse",
    "DigitsRunRequest",
    "EngineMemory",
    "ErrorResponse",
    "FiltersReportResponse",
    "FiltersResponse",
    "FrequencyResponse",
    "HealthResponse",
    "InvarianceRequest",
    "InvarianceResponse",
    "JobError",
    "JobResponse",
    "LabelInfo",
    "LayerResponse",
    "ModelInfo",
    "OcclusionFeature",
    "OcclusionReference",
    "OcclusionRequest",
    "OcclusionResponse",
    "PredictionResponse",
    "Preprocessing",
    "ProjectionItem",
    "ProjectionSeed",
    "ProjectionsRequest",
    "ReceptiveFieldInfo",
    "RuleCoverage",
    "SampleInfo",
    "ScanImageRef",
    "ScanInfo",
    "ScanProgress",
    "ScanRequest",
    "ScanRootInfo",
    "SpriteInfo",
    "StoredUnit",
    "StudyList",
    "StudySummary",
    "TopEntry",
    "TopProjection",
    "TopResponse",
    "UploadResponse",
    "VisualizationRequest",
]
