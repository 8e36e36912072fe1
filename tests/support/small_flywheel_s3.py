"""The small flywheel (``tests/support/small_flywheel.py``) with the production object store: the store at
``COSMICMAN_STORE_URL`` on the S3 endpoint ``COSMICMAN_S3_ENDPOINT``, credentials from ``AWS_*``, wired as the
``s3`` and ``k8s`` environments wire it. The code location tests/test_production.py turns over a PostgreSQL
instance; every other resource stays the synthetic world's (no production model ships here)."""

from cosmicman.definitions import build_definitions
from cosmicman.environments.local import local_execution
from cosmicman.environments.production import object_store
from cosmicman.environments.settings import training_variants
from cosmicman.environments.variables import EnvironmentVariables
from tests.support.small_flywheel import small_resources

variables = EnvironmentVariables("s3")
store = object_store(variables)
variables.check()
defs = build_definitions(
    {**small_resources(), "object_store": store}, variants=training_variants(), **local_execution()
)
