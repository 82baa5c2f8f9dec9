"""Resolution of an RLAIFJob into one :class:`StageConfig` per stage, shared by the operator and the
local pipeline: defaults that depend on other fields filled in, and every path made absolute."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rlaif_api.contract import ARTIFACT_DIRS, Stage
from rlaif_api.spec import RLAIFJob, RLAIFJobSpec


class ArtifactPaths(BaseModel):
    """Absolute directories of a job's artifacts: ``<workspace root>/<namespace>/<job>/<kind>/``."""

    model_config = ConfigDict(extra="forbid")

    candidates: str
    labels: str
    reward_model: str
    policy: str
    eval: str


class StageConfig(BaseModel):
    """Everything one stage needs, resolved: defaults filled and paths absolute. Serialized as the pod's config JSON."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage
    job: str
    namespace: str
    workspace: str
    artifacts: ArtifactPaths
    spec: RLAIFJobSpec

    @property
    def seed(self) -> int:
        return self.spec.seed

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> StageConfig:
        return cls.model_validate_json(Path(path).read_text())


def _resolve_path(value: str | None, base_dir: Path) -> str | None:
    """Relative paths resolve against ``base_dir``; hub ids and ``embedded:`` names pass through."""
    if value is None:
        return None
    if value.startswith(("./", "../")) or value in (".", ".."):
        return str((base_dir / value).resolve())
    return value


def _resolve_data_path(value: str | None, base_dir: Path) -> str | None:
    """Dataset files are always paths: anything not absolute is relative to ``base_dir``."""
    if value is None:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def resolve_spec(spec: RLAIFJobSpec, base_dir: str | Path) -> RLAIFJobSpec:
    """Fill the defaults that depend on other fields and make every path absolute."""
    base = Path(base_dir)
    resolved = spec.model_copy(deep=True)
    resolved.policy.model = _resolve_path(resolved.policy.model, base) or resolved.policy.model
    ds = resolved.dataset
    ds.prompts = _resolve_data_path(ds.prompts, base) or ds.prompts
    ds.eval_prompts = _resolve_data_path(ds.eval_prompts, base)
    ds.pairs = _resolve_data_path(ds.pairs, base)
    ds.labels = _resolve_data_path(ds.labels, base)
    ds.eval_references = _resolve_data_path(ds.eval_references, base)
    ds.calibration_pairs = _resolve_data_path(ds.calibration_pairs, base)
    for labeler in (resolved.labeler, resolved.evaluation.judge):
        if labeler is not None:
            labeler.model = (
                _resolve_path(labeler.model, base)
                if labeler.model
                else (resolved.policy.model if labeler.provider == "hf" else None)
            )
    if resolved.evaluation.judge is None and resolved.labeler is not None:
        resolved.evaluation.judge = resolved.labeler.model_copy(deep=True)
    rm = resolved.reward_model
    rm.model = _resolve_path(rm.model, base) or resolved.policy.model
    rm.path = _resolve_path(rm.path, base)
    resolved.evaluation.policy = _resolve_path(resolved.evaluation.policy, base)
    if resolved.evaluation.max_new_tokens is None:
        resolved.evaluation.max_new_tokens = resolved.rl.max_new_tokens
    return resolved


def labeler_server_stages(spec: RLAIFJobSpec) -> tuple[str, ...]:
    """The listed stages that ask the labeler, so need ``labeler.server`` up while they run: label;
    rl with ``reward: direct`` (d-RLAIF scores with the labeler); evaluate when the judge is the
    labeler. Empty without a server."""
    if spec.labeler is None or spec.labeler.server is None:
        return ()
    asks = {
        "label": True,
        "reward": False,
        "rl": spec.rl.reward == "direct",
        "evaluate": spec.evaluation.judge is None or spec.evaluation.judge == spec.labeler,
    }
    return tuple(stage for stage in spec.stages if asks.get(stage, False))


def job_workspace(workspace_root: str | Path, namespace: str, name: str) -> Path:
    return Path(workspace_root) / namespace / name


def resolve_stage_configs(
    job: RLAIFJob, workspace_root: str | Path, base_dir: str | Path | None = None
) -> dict[str, StageConfig]:
    """One :class:`StageConfig` per listed stage.

    ``base_dir`` anchors relative paths: the YAML's directory for the local pipeline, the workspace
    volume's mount point in a cluster (the default).
    """
    workspace = job_workspace(workspace_root, job.metadata.namespace, job.metadata.name)
    spec = resolve_spec(job.spec, base_dir if base_dir is not None else workspace_root)
    artifacts = ArtifactPaths(**{key: str(workspace / sub) for key, sub in ARTIFACT_DIRS.items()})
    return {
        stage: StageConfig(
            stage=stage,
            job=job.metadata.name,
            namespace=job.metadata.namespace,
            workspace=str(workspace),
            artifacts=artifacts,
            spec=spec,
        )
        for stage in spec.stages
    }
