"""Jobs (one per stage) and the sensors that keep the flywheel turning, one module per stage."""

from cosmicman.jobs.annotation import (
    annotation_round_job,
    annotations_job,
    hitl_round_sensor,
    hitl_setup_job,
    labels_arrived_sensor,
    labels_job,
)
from cosmicman.jobs.automation import flywheel_automation
from cosmicman.jobs.sourcing import fake_person_job, filtering_job, pool_job, pool_threshold_sensor, sourcing_job
from cosmicman.jobs.training import ablation_job, dataset_job, evaluation_job, training_job

ALL_JOBS = [
    pool_job,
    sourcing_job,
    filtering_job,
    fake_person_job,
    hitl_setup_job,
    annotation_round_job,
    labels_job,
    annotations_job,
    dataset_job,
    training_job,
    evaluation_job,
    ablation_job,
]
ALL_SENSORS = [pool_threshold_sensor, labels_arrived_sensor, hitl_round_sensor, flywheel_automation]
