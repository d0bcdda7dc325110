"""Integrations of fxpress with other tools' entry points.

``torch_compile``: the ``torch.compile(model, backend="fxpress")`` backend
(registered with torch through the ``torch_dynamo_backends`` entry point in
pyproject.toml, so it works without importing fxpress first).
"""
