"""The small flywheel (``tests/support/small_flywheel.py``) holding every secret a deployment holds, each read
from its environment variable as a ``dg.EnvVar`` by the resource that uses it: the store's S3 credentials (as the
``s3`` / ``k8s`` environments wire them), the web APIs' keys of sourcing (as the local environment reads them:
pointed at the fake APIs by ``COSMICMAN_<API>_BASE_URL``), and the Label Studio key of labelling.
tests/test_secrets.py turns it and looks for the values everywhere a user or an operator can read."""

from cosmicman.definitions import build_definitions
from cosmicman.environments.local import local_execution, local_web_apis
from cosmicman.environments.production import object_store
from cosmicman.environments.settings import training_variants
from cosmicman.environments.simulated_annotation import SimulatedLabellingResource
from cosmicman.environments.simulated_data import SimulatedSourcingResource
from cosmicman.environments.variables import EnvironmentVariables
from tests.support.small_flywheel import small_resources

variables = EnvironmentVariables("s3")
resources = small_resources()
small_sourcing = resources["sourcing"]
resources.update(
    object_store=object_store(variables),
    sourcing=SimulatedSourcingResource(
        **{field: getattr(small_sourcing, field) for field in small_sourcing.model_fields_set}, **local_web_apis()
    ),
    labelling=SimulatedLabellingResource(label_studio_api_key=variables.secret("LABEL_STUDIO_API_KEY")),
)
variables.check()
defs = build_definitions(resources, variants=training_variants(), **local_execution())
