"""Read `deployments/prefect.yaml` so serving and deploying share one definition of each
deployment: name, description, tags, schedules, concurrency limit and parameters."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # path/to/module.py:function, relative to the repository root
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    concurrency_limit: int | None = None
    work_pool: str | None = None


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    document = yaml.safe_load(path.read_text())
    specs = []
    for item in document.get("deployments") or []:
        specs.append(
            DeploymentSpec(
                name=item["name"],
                entrypoint=item["entrypoint"],
                description=item.get("description"),
                tags=list(item.get("tags") or []),
                schedules=list(item.get("schedules") or []),
                parameters=dict(item.get("parameters") or {}),
                concurrency_limit=item.get("concurrency_limit"),
                work_pool=(item.get("work_pool") or {}).get("name"),
            )
        )
    return specs


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """Import `flows/enrich.py:enrich_documents` as the module `flows.enrich`."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def full_name(spec: DeploymentSpec) -> str:
    """`flow/deployment`, as `prefect deployment run` and `run_deployment` take it."""
    return f"{load_flow(spec.entrypoint).name}/{spec.name}"


def schedules_of(spec: DeploymentSpec) -> list[Schedule]:
    from prefect.schedules import Cron, Interval

    schedules: list[Schedule] = []
    for item in spec.schedules:
        common = {
            "timezone": item.get("timezone"),
            "active": item.get("active", True),
            "slug": item.get("slug"),
        }
        if "cron" in item:
            schedules.append(Cron(item["cron"], **common))
        elif "interval" in item:
            schedules.append(Interval(item["interval"], **common))
        else:
            raise ValueError(f"deployment {spec.name!r}: serve supports cron and interval only")
    return schedules


def runner_deployment(spec: DeploymentSpec, overrides: dict[str, Any]) -> RunnerDeployment:
    """The deployment as `prefect.serve` takes it, with `overrides` over its parameters."""
    return load_flow(spec.entrypoint).to_deployment(
        name=spec.name,
        description=spec.description,
        tags=spec.tags,
        schedules=schedules_of(spec),
        concurrency_limit=spec.concurrency_limit,
        parameters={**spec.parameters, **overrides},
    )
