"""How much one request may ask: the service's settings and the serverless functions share these defaults.

A module of its own, without pydantic: a function's cold start imports it, not the service's settings.
"""

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ROWS_PER_REQUEST = 100_000
# A forecast row asks for `range` steps: 10,000 rows x 365 answered 250 MB and held 0.5-1 GB in the worker.
# One step costs ~70 bytes of JSON and ~100 bytes of worker memory while it is answered.
MAX_FORECAST_STEPS = 1_000_000
