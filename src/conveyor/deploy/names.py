"""Checks for the names Kubernetes and container registries accept, so bad values fail before anything is written."""

from __future__ import annotations

import re

from conveyor.errors import InvalidInput

# Services need a DNS-1035 label (starts with a letter); the longest suffix we add is "-gateway".
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63 - len("-gateway")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_IMAGE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def dns_name(model_name: str) -> str:
    """The Kubernetes name for a model: lower case, '_' and '.' turned into '-' (`Sales_EU` -> `sales-eu`)."""
    return re.sub(r"[._]", "-", model_name.lower())


def check_dns_name(name: str) -> str:
    if len(name) > MAX_NAME or not _DNS_LABEL.match(name):
        raise InvalidInput(
            f"bad Kubernetes name {name!r}: use at most {MAX_NAME} lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit (pass --name to choose one)"
        )
    return name


def check_image(image: str) -> str:
    first, sep, _ = image.partition("/")
    # as in Docker: the first part names a registry only if it looks like a host, else it is a lower-case path
    looks_like_host = "." in first or ":" in first or first == "localhost"
    if len(image) > 255 or not _IMAGE.match(image) or (sep and not looks_like_host and first != first.lower()):
        raise InvalidInput(
            f"bad image reference {image!r}: use [REGISTRY/]REPOSITORY[:TAG] with a lower-case repository, "
            "e.g. us.gcr.io/my-project/echo_service:1"
        )
    return image


def check_quantity(value: str, what: str) -> str:
    if not _QUANTITY.match(value):
        raise InvalidInput(f"bad {what} {value!r}: use a Kubernetes quantity such as 500m, 1, 512Mi or 1Gi")
    return value


def check_service_account(name: str) -> str:
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise InvalidInput(
            f"bad service account name {name!r}: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    if name == "default":  # the kustomization owns the account it writes: `kubectl delete -k` would delete it
        raise InvalidInput(
            "--service-account default is the namespace's own account, which these manifests must not own "
            "(kubectl delete -k would delete it): name one for the service, e.g. sales-reader"
        )
    return name
