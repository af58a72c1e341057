"""`conveyor deploy`: the seed's container and GKE steps as commands (build, push, deploy, expose, autoscale)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click

from conveyor.deploy.kubernetes import AUTOSCALE, EXPOSE, GRPC_PORT, MASTER_MEMORY_MI, WORKER_MEMORY_MI
from conveyor.errors import ConveyorError, InvalidInput

DIR = click.Path(file_okay=False, path_type=Path)


def _lookup_store(store: str | None, fallback: str | None) -> str:
    return store or fallback or os.environ.get("CONVEYOR_STORE") or "./models"


@click.group()
def deploy() -> None:
    """Package a model as a container image for Kubernetes with autoscaling, or as a serverless function.

    \b
    The seed's GKE walkthrough, with Conveyor:
      conveyor deploy docker sales --output build/sales --build --push us.gcr.io/PROJECT/echo_service:1
      conveyor deploy k8s sales --output k8s/sales --image us.gcr.io/PROJECT/echo_service:1 --apply
    A function (which of the two costs less for your traffic: conveyor plan):
      conveyor deploy function sales --target gcp --output build/sales-fn
    """


@deploy.command("docker")
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option("--output", "-o", required=True, type=DIR, help="Directory for the build context.")
@click.option("--bake", is_flag=True, help="Copy the model (checksums verified) into the image: the default.")
@click.option(
    "--from-store",
    metavar="URI",
    default=None,
    help="Do not bake: the container loads the model from this store at start (e.g. gs://bucket/models) "
    "and follows its alias.",
)
@click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Where to find the model now [default: --from-store, else CONVEYOR_STORE, else ./models].",
)
@click.option("--tag", "-t", default=None, help="Image tag [default: conveyor-NAME:VERSION].")
@click.option("--build", is_flag=True, help="Build the image with docker, podman or buildah (whichever is present).")
@click.option("--push", "push_to", metavar="REGISTRY/IMAGE:TAG", default=None, help="Tag and push (implies --build).")
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Copy wheels from this directory instead of downloading them from PyPI.",
)
@click.option("--workers", default=2, show_default=True, help="gunicorn workers in the container (CONVEYOR_WORKERS).")
@click.option(
    "--grpc",
    is_flag=True,
    help=f"Also serve the Open Inference Protocol over gRPC on port {GRPC_PORT} (adds grpcio, protobuf and grpcio-health-checking).",
)
def docker_cmd(model, output, bake, from_store, store, tag, build, push_to, wheelhouse, workers, grpc):
    """Write a build context serving the model: Dockerfile, .dockerignore, wheelhouse and (baked) model.

    The image runs `conveyor serve` (gunicorn + uvicorn workers) on 0.0.0.0:8080 (and gRPC on 8081 with --grpc)
    as a non-root user, with a HEALTHCHECK on /healthz and OCI labels naming the model, its version and its manifest's sha256.
    """
    from conveyor.deploy.build import build_image, find_builder, push_image
    from conveyor.deploy.context import render_docker_context
    from conveyor.deploy.names import check_image

    if bake and from_store:
        raise InvalidInput("--bake and --from-store exclude each other: bake the model in, or pull it at start")
    if push_to:
        check_image(push_to)
    builder = find_builder() if (build or push_to) else None
    ctx = render_docker_context(
        _lookup_store(store, from_store),
        model,
        output,
        bake=not from_store,
        from_store=from_store,
        tag=tag,
        wheels=wheelhouse if wheelhouse is not None else True,
        workers=workers,
        grpc=grpc,
    )
    how = f"pulled from {from_store} at start" if from_store else "baked in"
    click.echo(f"wrote {output}/ for {ctx.model.ref} ({how}; {ctx.wheels} wheels; sha256 {ctx.model.sha256[:12]}...)")
    click.echo(f"left out (serving {ctx.model.ref} never imports them): {', '.join(ctx.left_out)}")
    if builder is None:
        click.echo(f"build it:  docker build -t {ctx.tag} {output}")
        return
    result = build_image(output, ctx.tag, builder)
    click.echo(
        f"built {result.tag} with {result.builder} in {result.seconds:.1f}s: "
        f"image size {result.size_bytes / 1e6:.1f} MB ({result.size_bytes:,} bytes)"
    )
    if push_to:
        push_image(ctx.tag, push_to, builder)
        click.echo(f"pushed {push_to}")


@deploy.command("k8s")
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option("--output", "-o", required=True, type=DIR, help="Directory for the kustomize manifests.")
@click.option("--image", default=None, help="Image to run [default: conveyor-NAME:VERSION, as deploy docker tags it].")
@click.option("--name", default=None, help="Kubernetes name (DNS-1123) [default: from the model name].")
@click.option(
    "--expose",
    type=click.Choice(EXPOSE),
    default="loadbalancer",
    show_default=True,
    help="How clients reach the pods: a public LoadBalancer Service (the seed's); a Gateway API Gateway routing "
    "only the API to an internal ClusterIP Service; or a ClusterIP Service alone (inside the cluster). /metrics "
    "is on a pod port of its own (9090) that none of them exposes.",
)
@click.option(
    "--autoscale",
    type=click.Choice(AUTOSCALE),
    default="cpu",
    show_default=True,
    help="What the one HorizontalPodAutoscaler follows: CPU (the seed's kubectl autoscale); the GKE Gateway's "
    "traffic (needs --expose gateway); or requests/s from Prometheus through prometheus-adapter.",
)
@click.option("--cpu-percent", type=int, default=80, show_default=True, help="Target CPU utilization, 1..100.")
@click.option("--min", "min_replicas", type=int, default=2, show_default=True, help="Fewest replicas.")
@click.option("--max", "max_replicas", type=int, default=5, show_default=True, help="Most replicas.")
@click.option(
    "--rps-per-pod",
    type=int,
    default=50,
    show_default=True,
    help="With --autoscale gke-traffic or prometheus: requests/s one pod takes.",
)
@click.option(
    "--gateway-class",
    default="gke-l7-global-external-managed",
    show_default=True,
    help="With --expose gateway: the GatewayClass (gke-l7-rilb: an internal, regional Gateway).",
)
@click.option(
    "--service-account",
    metavar="NAME",
    default=None,
    help="Run the pods as this Kubernetes service account (written with the manifests): the identity to grant "
    "read access to a gs:// store with Workload Identity.",
)
@click.option(
    "--from-store",
    metavar="URI",
    default=None,
    help="Store the pods load the model from [default: /models, the store baked into the image].",
)
@click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Where to check the model now [default: --from-store, else CONVEYOR_STORE, else ./models].",
)
@click.option("--workers", type=int, default=2, show_default=True, help="gunicorn workers per pod.")
@click.option("--cpu", default="500m", show_default=True, help="CPU request per pod (the HPA's 100%).")
@click.option("--cpu-limit", default="2", show_default=True, help="CPU limit per pod.")
@click.option(
    "--memory",
    default=None,
    help=f"Memory request and limit per pod [default: {MASTER_MEMORY_MI}Mi + {WORKER_MEMORY_MI}Mi per worker].",
)
@click.option(
    "--grpc",
    is_flag=True,
    help=f"Also serve gRPC (Open Inference Protocol) on pod and Service port {GRPC_PORT}; the image must be built "
    "with `deploy docker --grpc`. Not with --expose gateway, whose routes are HTTP.",
)
@click.option("--apply", "apply_", is_flag=True, help="Run `kubectl apply -k OUTPUT` afterwards.")
def k8s_cmd(model, output, image, name, expose, autoscale, cpu_percent, min_replicas, max_replicas, rps_per_pod,
            gateway_class, service_account, from_store, store, workers, cpu, cpu_limit, memory, grpc, apply_):  # fmt: skip
    """Write a kustomize directory serving the model: Deployment, Service, HPA, PodDisruptionBudget.

    \b
    The HPA is the seed's `kubectl autoscale deployment NAME --cpu-percent=80 --min=2 --max=5` and owns the
    replica count: the Deployment sets none, so `kubectl apply -k` again never resets it.
    Pods spread across zones and nodes, run as a non-root user on a read-only root filesystem,
    are probed on /readyz and /healthz, and drain in-flight requests on termination.
    """
    from conveyor.deploy.manifests import render_k8s

    kubectl = shutil.which("kubectl") if apply_ else None
    if apply_ and kubectl is None:
        raise ConveyorError("--apply needs kubectl on PATH; the manifests were not written")
    files = render_k8s(
        name,
        model,
        output,
        image=image,
        cpu_percent=cpu_percent,
        min=min_replicas,
        max=max_replicas,
        store_uri=from_store,
        expose=expose,
        autoscale=autoscale,
        service_account=service_account,
        lookup_store=_lookup_store(store, from_store),
        workers=workers,
        cpu=cpu,
        cpu_limit=cpu_limit,
        memory=memory,
        rps_per_pod=rps_per_pod,
        gateway_class=gateway_class,
        grpc=grpc,
    )
    click.echo(f"wrote {len(files)} files to {output}/: " + ", ".join(p.relative_to(output).as_posix() for p in files))
    if kubectl is None:
        click.echo(f"apply with:  kubectl apply -k {output}")
        return
    done = subprocess.run([kubectl, "apply", "-k", str(output)])
    if done.returncode != 0:
        raise ConveyorError(f"kubectl apply -k {output} failed with exit code {done.returncode} (see above)")


@deploy.command("function")
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option(
    "--target",
    type=click.Choice(["gcp", "aws"]),
    required=True,
    help="gcp: a Cloud Run functions source directory (main.py, requirements.txt, vendored wheels); "
    "aws: a Lambda function.zip for the managed Python runtime.",
)
@click.option("--output", "-o", required=True, type=DIR, help="Directory to write the function into.")
@click.option(
    "--from-store",
    metavar="URI",
    default=None,
    help="Do not bake: the function loads the model from this store when an instance starts (e.g. gs://bucket/models).",
)
@click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Where to find the model now [default: --from-store, else CONVEYOR_STORE, else ./models].",
)
@click.option(
    "--runtime",
    default=None,
    help="The provider's Python runtime [default: python311 on gcp, python3.12 on aws; also python312, python3.13].",
)
@click.option("--name", default=None, help="Function name [default: from the model name].")
@click.option(
    "--region", default=None, help="Region, in the printed deploy commands [default: us-central1 / us-east-1]."
)
@click.option("--memory", type=int, default=1024, show_default=True, help="Memory in MB, in the deploy commands.")
@click.option(
    "--package",
    type=click.Choice(["zip", "image"]),
    default="zip",
    show_default=True,
    help="aws: a function.zip for the managed runtime (at most 250 MB unzipped), or a container image's build "
    "context (Debian's python3 with the runtime interface client; up to 10 GB).",
)
@click.option(
    "--tag", "-t", default=None, help="With --package image: the tag [default: conveyor-NAME-lambda:VERSION]."
)
@click.option("--build", is_flag=True, help="With --package image: build it with docker, podman or buildah.")
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Copy wheels from this directory instead of downloading them from PyPI.",
)
def function_cmd(model, target, output, from_store, store, runtime, name, region, memory, package, tag, build,
                 wheelhouse):  # fmt: skip
    """Write a serverless function serving the model as `conveyor serve` does.

    \b
    GET /predict?range=N&series=S, POST /predict (instances, dataframe_split, CSV), the V2 routes, and the same
    4xx JSON errors. The model loads once per instance start; the cold start imports only what it needs.
    Prints the gcloud or aws commands that deploy it (they are not run).
    """
    from conveyor.deploy.build import build_image, find_builder
    from conveyor.deploy.function import deploy_commands, render_function

    image = target == "aws" and package == "image"
    if (build or tag) and not image:
        raise InvalidInput("--tag and --build go with --target aws --package image")
    builder = find_builder() if build else None
    bundle = render_function(
        _lookup_store(store, from_store),
        model,
        output,
        target,
        from_store=from_store,
        runtime=runtime,
        name=name,
        wheels=wheelhouse if wheelhouse is not None else True,
        package=package,
        tag=tag,
    )
    how = f"loaded from {from_store} at start" if from_store else "baked in"
    kind = "a Lambda image's build context" if image else bundle.runtime
    click.echo(f"wrote {output}/ for {bundle.model.ref} ({how}; {bundle.wheels} wheels for {kind})")
    if image and builder is not None:
        result = build_image(output, bundle.tag, builder)
        click.echo(
            f"built {result.tag} with {result.builder} in {result.seconds:.1f}s: "
            f"image size {result.size_bytes / 1e6:.1f} MB ({result.size_bytes:,} bytes)"
        )
    elif image:
        click.echo(f"build it:  docker build -t {bundle.tag} {output}")
    elif target == "aws":
        compiled = "compiled" if bundle.compiled else f"not compiled: no python{bundle.runtime[6:]} here"
        click.echo(
            f"{bundle.artifact}: {bundle.zip_bytes / 1e6:.1f} MB zipped, {bundle.unzipped_bytes / 1e6:.1f} MB "
            f"unzipped of Lambda's 262.1 MB ({compiled})"
        )
    click.echo("deploy it:")
    for command in deploy_commands(bundle, region or {"gcp": "us-central1", "aws": "us-east-1"}[target], memory):
        click.echo(f"  {command}")
