"""What a model's deployment on Kubernetes is made of: how clients reach it, what scales it, what a pod needs.

Kept apart from the rendering so the `conveyor` command can offer these choices without importing it.
"""

from __future__ import annotations

# How clients reach the pods, and what the HorizontalPodAutoscaler follows (see `conveyor deploy k8s --help`).
EXPOSE = ("loadbalancer", "gateway", "cluster")
AUTOSCALE = ("cpu", "gke-traffic", "prometheus")
# The Open Inference Protocol over gRPC, when an image (deploy docker --grpc) or a pod (deploy k8s --grpc) serves it
GRPC_PORT = 8081
# Memory per pod, measured with the demo forecaster: the gunicorn master holds ~100 MB; a worker ~90 MB idle and
# up to 340 MiB while it answers the largest requests the server accepts (a million forecast steps).
MASTER_MEMORY_MI = 128
WORKER_MEMORY_MI = 384
# What a Gateway routes: the API. /metrics and the kubelet's probes (/healthz, /readyz) stay inside the cluster.
PUBLIC_PATHS = (
    ("Exact", "/"),
    ("Exact", "/predict"),
    ("Exact", "/forecast"),
    ("Exact", "/series"),
    ("PathPrefix", "/predictions"),
    ("PathPrefix", "/v2"),
    ("Exact", "/openapi.json"),
    ("Exact", "/docs"),
)


def pod_memory(workers: int) -> str:
    """The memory request (and limit) of a pod running `workers` gunicorn workers."""
    return f"{MASTER_MEMORY_MI + WORKER_MEMORY_MI * workers}Mi"
