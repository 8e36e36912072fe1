"""Every variable the deployed environments (``s3``, ``k8s``) require, set to placeholder values: enough to
build their code location without a cluster, a model or a key (nothing is read until a run)."""

from __future__ import annotations

# in the order the environment reads them (its error names the missing ones in this order)
S3_REQUIRED = {
    "COSMICMAN_STORE_URL": "s3://cosmicman-test/flywheel",
    "AWS_ACCESS_KEY_ID": "placeholder-access-key",
    "AWS_SECRET_ACCESS_KEY": "placeholder-secret-key",
    "COSMICMAN_PARQUET_URL": "s3://cosmicman-test/sources/laion.parquet",
    "FLICKR_API_KEY": "placeholder-flickr-key",
    "UNSPLASH_ACCESS_KEY": "placeholder-unsplash-key",
    "PIXABAY_API_KEY": "placeholder-pixabay-key",
    "COSMICMAN_FAKE_HEAD_TRAIN_URL": "s3://cosmicman-test/human-art",
    "COSMICMAN_PARSER_MODEL": "/models/atr-segformer",
    "COSMICMAN_VLM_MODEL": "/models/instructblip",
    "COSMICMAN_ANNOTATOR_EVAL_SET_URL": "s3://cosmicman-test/annotation/eval-set",
    "LABEL_STUDIO_URL": "http://label-studio.cosmicman:8080",
    "LABEL_STUDIO_API_KEY": "placeholder-label-studio-key",
    "COSMICMAN_TEST_PROMPTS_URL": "s3://cosmicman-test/evaluation/prompts.jsonl",
    "COSMICMAN_JUDGE_MODEL": "/models/vqa-judge",
    "COSMICMAN_INCEPTION_PATH": "/models/inception.pt",
    "COSMICMAN_CLIPSCORE_MODEL": "/models/clip-vit-l-14",
    "COSMICMAN_HPSV2_PATH": "/models/hpsv2.pt",
}
K8S_REQUIRED = {**S3_REQUIRED, "COSMICMAN_TRAIN_IMAGE": "registry.example/cosmicman:1.0.0"}
REQUIRED = {"s3": S3_REQUIRED, "k8s": K8S_REQUIRED}
