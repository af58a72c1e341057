"""Package a model as a container image and deploy it on Kubernetes (`conveyor deploy docker|k8s`).

Needs the `deploy` extra (jinja2, pip); importing `conveyor.deploy` alone imports neither.
"""
