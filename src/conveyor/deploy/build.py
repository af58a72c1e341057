"""Build, measure and push an image with whichever tool is present: docker (with a daemon), podman or buildah.

podman and buildah get the flags that work without a daemon, as root, inside an unprivileged container
(vfs storage, runc, cgroupfs, chroot isolation); both then share one image store, so an image buildah
built is the one podman runs. `--format docker` keeps the HEALTHCHECK, which OCI images cannot carry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import ConveyorError

PODMAN_FLAGS = ("--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager=cgroupfs")
BUILDAH_FLAGS = ("--storage-driver", "vfs")


@dataclass(frozen=True)
class Builder:
    name: str
    command: tuple[str, ...]

    def build_args(self, context: Path, tag: str) -> list[str]:
        if self.name == "buildah":
            return [*self.command, "bud", "--isolation", "chroot", "--format", "docker", "-t", tag, str(context)]
        podman = ["--isolation", "chroot", "--format", "docker"] if self.name == "podman" else []
        return [*self.command, "build", *podman, "-t", tag, str(context)]

    def size(self, tag: str) -> int:
        if self.name == "buildah":
            if shutil.which("podman"):  # same vfs store: podman reports the size in bytes
                return int(_run(["podman", *PODMAN_FLAGS, "image", "inspect", "--format", "{{.Size}}", tag]).strip())
            images = json.loads(_run([*self.command, "images", "--json", tag]))
            return int(images[0]["size"]) if images and str(images[0].get("size", "")).isdigit() else 0
        return int(_run([*self.command, "image", "inspect", "--format", "{{.Size}}", tag]).strip())

    def tag(self, source: str, target: str) -> None:
        _run([*self.command, "tag", source, target])

    def push(self, target: str) -> None:
        """Pushes with the credentials of `docker login` / `podman login` / `gcloud auth configure-docker`."""
        _run([*self.command, "push", target], timeout=3600)


@dataclass(frozen=True)
class BuildResult:
    builder: str
    tag: str
    seconds: float
    size_bytes: int


def find_builder() -> Builder:
    """docker if its daemon answers, else buildah, else podman; a clear error when none can build."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
        if probe.returncode == 0:
            return Builder("docker", ("docker",))
    if shutil.which("buildah"):
        return Builder("buildah", ("buildah", *BUILDAH_FLAGS))
    if shutil.which("podman"):
        return Builder("podman", ("podman", *PODMAN_FLAGS))
    hint = "docker is installed but its daemon does not answer; " if shutil.which("docker") else ""
    raise ConveyorError(
        f"{hint}no image builder found: install docker, podman or buildah "
        "(on Debian: apt-get install podman buildah runc, or scripts/container-deps.sh)"
    )


def build_image(context: Path, tag: str, builder: Builder | None = None) -> BuildResult:
    """Build `context` as `tag`, streaming the builder's output; returns the time taken and the image size."""
    builder = builder or find_builder()
    started = time.perf_counter()
    done = subprocess.run(builder.build_args(context, tag))
    if done.returncode != 0:
        raise ConveyorError(f"{builder.name} build of {tag} failed with exit code {done.returncode} (see above)")
    seconds = time.perf_counter() - started
    return BuildResult(builder.name, tag, seconds, builder.size(tag))


def push_image(tag: str, target: str, builder: Builder | None = None) -> None:
    builder = builder or find_builder()
    if target != tag:
        builder.tag(tag, target)
    builder.push(target)


def _run(cmd: list[str], timeout: float = 600) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ConveyorError(f"{' '.join(cmd[:2])} ... failed: {lines[-1] if lines else done.returncode}")
    return done.stdout
