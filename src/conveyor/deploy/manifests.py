"""The kustomize directory serving a model on Kubernetes: Deployment, Service, the one autoscaler, and the rest."""

from __future__ import annotations

from pathlib import Path

from conveyor.deploy.kubernetes import AUTOSCALE, EXPOSE, GRPC_PORT, PUBLIC_PATHS, pod_memory
from conveyor.deploy.names import check_dns_name, check_image, check_quantity, check_service_account, dns_name
from conveyor.deploy.render import (
    BAKED_STORE,
    METRICS_PORT,
    PORT,
    UID,
    check_workers,
    default_tag,
    find_model,
    render_template,
    staging,
)
from conveyor.errors import InvalidInput

PRE_STOP_SECONDS = 5
GRACEFUL_TIMEOUT = 30
# Every entry a render may write (`autoscaling/`: older renders' second autoscalers), replaced as a whole.
K8S_FILES = (
    "kustomization.yaml",
    "deployment.yaml",
    "service.yaml",
    "hpa.yaml",
    "pdb.yaml",
    "serviceaccount.yaml",
    "gateway.yaml",
    "httproute.yaml",
    "prometheus-adapter-values.yaml",
    "autoscaling",
)


def render_k8s(
    name: str | None,
    ref: str,
    output_dir: str | Path,
    image: str | None = None,
    cpu_percent: int = 80,
    min: int = 2,
    max: int = 5,
    store_uri: str | None = None,
    *,
    expose: str = "loadbalancer",
    autoscale: str = "cpu",
    service_account: str | None = None,
    lookup_store: str | None = None,
    workers: int = 2,
    cpu: str = "500m",
    cpu_limit: str = "2",
    memory: str | None = None,
    rps_per_pod: int = 50,
    gateway_class: str = "gke-l7-global-external-managed",
    grpc: bool = False,
) -> list[Path]:
    """Write a kustomize directory serving `ref`; returns the files written.

    `store_uri` is where the pods read the model (default: the store baked into the image);
    `lookup_store` is where the model is checked now (default: `store_uri`). `expose` is one of EXPOSE,
    `autoscale` one of AUTOSCALE: the directory holds exactly one HorizontalPodAutoscaler, for that mode,
    and the Deployment no replica count (the autoscaler's to set), so re-applying it never fights the autoscaler.
    `memory` (request and limit) defaults to what `workers` need. `grpc` serves gRPC on GRPC_PORT too (the pod
    and the Service; an image built with the grpc extra).
    """
    _check_scaling(cpu_percent, min, max)
    check_workers(workers)
    if expose not in EXPOSE:
        raise InvalidInput(f"--expose must be one of {', '.join(EXPOSE)}, got {expose!r}")
    if autoscale not in AUTOSCALE:
        raise InvalidInput(f"--autoscale must be one of {', '.join(AUTOSCALE)}, got {autoscale!r}")
    if autoscale == "gke-traffic" and expose != "gateway":
        raise InvalidInput(
            "--autoscale gke-traffic needs --expose gateway: GKE measures the traffic at the Gateway's load balancer"
        )
    if grpc and expose == "gateway":
        raise InvalidInput(
            "--grpc needs --expose loadbalancer or cluster: the Gateway's routes carry HTTP only, not gRPC"
        )
    if rps_per_pod < 1:
        raise InvalidInput(f"--rps-per-pod must be at least 1, got {rps_per_pod}")
    memory = memory if memory is not None else pod_memory(workers)
    for value, what in ((cpu, "CPU request"), (cpu_limit, "CPU limit"), (memory, "memory")):
        check_quantity(value, what)
    if not gateway_class or not all(c.isalnum() or c in "-." for c in gateway_class):
        raise InvalidInput(f"bad gateway class {gateway_class!r}")
    if service_account is not None:
        check_service_account(service_account)
    model = find_model(lookup_store or store_uri or "./models", ref)
    name = check_dns_name(name if name is not None else dns_name(model.ref.name))
    image = check_image(image or default_tag(model))
    resources = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
    resources += ["serviceaccount.yaml"] if service_account else []
    resources += ["gateway.yaml", "httproute.yaml"] if expose == "gateway" else []
    output = Path(output_dir)
    values = {
        "name": name,
        "model": model,
        "image": image,
        "cpu_percent": cpu_percent,
        "min_replicas": min,
        "max_replicas": max,
        "expose": expose,
        "autoscale": autoscale,
        "service_account": service_account,
        "store": store_uri or BAKED_STORE,
        "port": PORT,
        "metrics_port": METRICS_PORT,
        "grpc_port": GRPC_PORT if grpc else None,
        "uid": UID,
        "workers": workers,
        "cpu": cpu,
        "cpu_limit": cpu_limit,
        "memory": memory,
        "rps_per_pod": rps_per_pod,
        "capacity_percent": 70,
        "gateway_class": gateway_class,
        "public_paths": PUBLIC_PATHS,
        "pre_stop_seconds": PRE_STOP_SECONDS,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "termination_grace": PRE_STOP_SECONDS + GRACEFUL_TIMEOUT + 10,
        "resources": resources,
        "output_name": output.name,
    }
    # Helm values for prometheus-adapter: installed with helm, not applied with kubectl, so not a resource
    helm = ["prometheus-adapter-values.yaml"] if autoscale == "prometheus" else []
    written = ["kustomization.yaml", *resources, *helm]
    with staging(output, K8S_FILES) as stage:
        for rel in written:
            (stage / rel).write_text(render_template(f"k8s/{rel}.j2", values))
    return [output / rel for rel in written]


def _check_scaling(cpu_percent: int, min_replicas: int, max_replicas: int) -> None:
    if not 1 <= cpu_percent <= 100:
        raise InvalidInput(f"--cpu-percent must be between 1 and 100, got {cpu_percent}")
    if min_replicas < 1:
        raise InvalidInput(f"--min must be at least 1, got {min_replicas}")
    if max_replicas < min_replicas:
        raise InvalidInput(f"--min ({min_replicas}) must not be greater than --max ({max_replicas})")
