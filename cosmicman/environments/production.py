"""The production backends of every stage, shared by the deployed environments (``s3``, ``k8s``).

Nothing here is synthetic: real sources (each named source needs its variable: a source without its key
is an error, not a silent drop), the transformers filter models, a segmentation parser, a VLM annotator
checked on a labelled evaluation set, Label Studio for people, and the evaluation's prompt set and judge
from files. Each value comes from an environment variable read through :class:`EnvironmentVariables`, so
one error names every variable missing.
"""

from __future__ import annotations

from typing import Any

from cosmicman.environments.variables import EnvironmentVariables
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource

SOURCES_VAR = "COSMICMAN_SOURCES"
# each source a deployment may name, and the variable it cannot run without
SOURCE_VARIABLES = {
    "parquet": "COSMICMAN_PARQUET_URL",
    "folder": "COSMICMAN_FOLDER_URL",
    "flickr": "FLICKR_API_KEY",
    "unsplash": "UNSPLASH_ACCESS_KEY",
    "pixabay": "PIXABAY_API_KEY",
}
DEFAULT_SOURCES = "parquet,flickr,unsplash,pixabay"
# the paper's held-out test set: 2,048 prompts
PAPER_TEST_PROMPTS = 2048


def object_store(variables: EnvironmentVariables) -> ObjectStoreResource:
    """The S3-compatible store; the URL and credentials as ``dg.EnvVar``."""
    return ObjectStoreResource(
        url=variables.secret("COSMICMAN_STORE_URL"),
        endpoint_url=variables.optional("COSMICMAN_S3_ENDPOINT"),
        access_key_id=variables.secret("AWS_ACCESS_KEY_ID"),
        secret_access_key=variables.secret("AWS_SECRET_ACCESS_KEY"),
    )


def chosen_sources(variables: EnvironmentVariables) -> list[str]:
    """The sources ``COSMICMAN_SOURCES`` names (default: the url list and the three web APIs)."""
    raw = variables.optional(SOURCES_VAR, DEFAULT_SOURCES) or DEFAULT_SOURCES
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SOURCE_VARIABLES))
    if unknown or not names:
        raise ValueError(f"{SOURCES_VAR}={raw!r}: unknown sources {unknown}; choose from {list(SOURCE_VARIABLES)}")
    return names


def production_sourcing(variables: EnvironmentVariables) -> SourcingResource:
    """Every named source with its variable; the web APIs' keys only as ``dg.EnvVar``."""
    names = chosen_sources(variables)
    settings: dict[str, Any] = {}
    if "parquet" in names:
        settings.update(parquet_url=variables.required("COSMICMAN_PARQUET_URL"), parquet_batch_size=10_000)
    if "folder" in names:
        settings.update(folder_url=variables.required("COSMICMAN_FOLDER_URL"), folder_batch_size=1000)
    if "flickr" in names:
        settings.update(flickr_api_key=variables.secret("FLICKR_API_KEY"), flickr_batch_size=500)
    if "unsplash" in names:
        settings.update(
            unsplash_access_key=variables.secret("UNSPLASH_ACCESS_KEY"),
            unsplash_batch_size=300,
            unsplash_production=True,
        )
    if "pixabay" in names:
        settings.update(pixabay_api_key=variables.secret("PIXABAY_API_KEY"), pixabay_batch_size=1000)
    return SourcingResource(
        pool_threshold=variables.positive_int("COSMICMAN_POOL_THRESHOLD", 1_000_000),
        workers=variables.positive_int("COSMICMAN_SOURCING_WORKERS", 8),
        **settings,
    )


def filter_models(variables: EnvironmentVariables) -> dict[str, Any]:
    """The person detector and CLIP the environment names instead of the defaults (hub ids or folders)."""
    named = {
        "person_detector_id": variables.optional("COSMICMAN_PERSON_DETECTOR"),
        "clip_id": variables.optional("COSMICMAN_CLIP_MODEL"),
    }
    return {field: value for field, value in named.items() if value}


def production_resources(variables: EnvironmentVariables, device: str) -> dict[str, Any]:
    """The store and every stage's production backend; models run on ``device``."""
    return {
        "object_store": object_store(variables),
        "sourcing": production_sourcing(variables),
        # the transformers person detector and CLIP (hub ids or local folders); the fake-person head trains
        # on a labelled real / virtual people folder in the Human-Art layout
        "filters": FilterResource(
            backend="production",
            device=device,
            fake_head_train_url=variables.required("COSMICMAN_FAKE_HEAD_TRAIN_URL"),
            **filter_models(variables),
        ),
        "parser": ParserResource(model_id=variables.required("COSMICMAN_PARSER_MODEL"), device=device),
        # a BLIP-2 / InstructBLIP checkpoint fine-tuned by the rounds, measured on a labelled real-photo I_e
        "annotation": AnnotatorResource(
            kind="vlm",
            vlm_model=variables.required("COSMICMAN_VLM_MODEL"),
            eval_set_url=variables.required("COSMICMAN_ANNOTATOR_EVAL_SET_URL"),
        ),
        # people label in Label Studio; images reach it as presigned S3 URLs
        # people label in Label Studio; s3:// images stay links that Label Studio's own S3 storage signs at
        # view time (never an expiring URL): read-only keys for it, or the server's own credentials
        "labelling": LabellingResource(
            backend_kind="label_studio",
            label_studio_url=variables.required("LABEL_STUDIO_URL"),
            label_studio_api_key=variables.secret("LABEL_STUDIO_API_KEY"),
            label_studio_s3_access_key_id=variables.optional_secret("LABEL_STUDIO_S3_ACCESS_KEY_ID"),
            label_studio_s3_secret_access_key=variables.optional_secret("LABEL_STUDIO_S3_SECRET_ACCESS_KEY"),
            label_studio_s3_endpoint=variables.optional("LABEL_STUDIO_S3_ENDPOINT"),
            label_studio_s3_presign=variables.optional("LABEL_STUDIO_S3_PRESIGN", "true") == "true",
        ),
        # the held-out prompts from a file (all of it, the paper's 2,048 unless told otherwise) and a VQA judge
        # apart from the annotator; FID / CLIPScore / HPSv2 on their real weights (no stand-in)
        "evaluation_config": EvaluationResource(
            n_prompts=None,
            expected_prompts=variables.positive_int("COSMICMAN_EXPECTED_PROMPTS", PAPER_TEST_PROMPTS),
            prompts_url=variables.required("COSMICMAN_TEST_PROMPTS_URL"),
            judge={"kind": "vqa", "path": variables.required("COSMICMAN_JUDGE_MODEL"), "device": device},
            inception_path=variables.required("COSMICMAN_INCEPTION_PATH"),
            clip_path=variables.required("COSMICMAN_CLIPSCORE_MODEL"),
            hpsv2_path=variables.required("COSMICMAN_HPSV2_PATH"),
            device=device,
        ),
        # the released recipe (NOTES-training.md) on SD-1.5 at 512: ZeRO-2, bf16, buckets, cached latents;
        # the environment may name another base model and step budget
        "training": TrainingResource(
            recipe="released-sd15",
            overrides={
                field: value
                for field, value in (
                    ("pretrained", variables.optional("COSMICMAN_PRETRAINED")),
                    ("steps", variables.positive_int("COSMICMAN_TRAIN_STEPS", 0) or None),
                )
                if value
            },
        ),
    }
