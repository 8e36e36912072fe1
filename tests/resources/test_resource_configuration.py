"""Production resources read real data only: each refuses to run without its setting, in one line that
names it; the local environment's subclasses plug the synthetic world in instead."""

import json
import os

import pytest

from cosmicman.core.store import Store
from cosmicman.environments.local import local_resources
from cosmicman.environments.simulated_data import (
    SimulatedEvaluationResource,
    SimulatedFilterResource,
    SimulatedParserResource,
    SimulatedSourcingResource,
)
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.simulation.parser import SyntheticTruthParser
from cosmicman.simulation.source import SyntheticSource


def _store() -> Store:
    return Store(f"memory://config-{os.urandom(4).hex()}")


@pytest.mark.parametrize(
    ("call", "setting"),
    [
        (lambda: SourcingResource().sources(), "folder_url"),
        (lambda: ParserResource().parser(_store()), "ParserResource.model_id"),
        (lambda: FilterResource().train_fake_person_head(_store()), "FilterResource.fake_head_train_url"),
        (lambda: EvaluationResource().test_attributes(), "EvaluationResource.prompts_url"),
    ],
)
def test_production_resources_refuse_to_run_without_their_setting(call, setting):
    with pytest.raises(ValueError, match=setting) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_evaluation_prompts_come_from_the_configured_file(tmp_path):
    people = [{"gender": "woman", "hair_color": "red"}, {"gender": "man", "hair_color": "black"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in people) + "\n")
    assert EvaluationResource(prompts_url=str(tmp_path / "prompts.jsonl"), n_prompts=1).test_attributes() == people[:1]


def test_the_local_environment_plugs_the_synthetic_world_in():
    resources = local_resources(store_url="memory://local-env", folder_url="/nonexistent")
    sourcing = resources["sourcing"]
    assert isinstance(sourcing, SimulatedSourcingResource)
    assert [type(s) for s, _ in sourcing.sources()] == [SyntheticSource]
    assert isinstance(resources["parser"], SimulatedParserResource)
    assert isinstance(resources["parser"].parser(_store()), SyntheticTruthParser)
    assert isinstance(resources["filters"], SimulatedFilterResource)
    evaluation = resources["evaluation_config"]
    assert isinstance(evaluation, SimulatedEvaluationResource)
    attributes = SimulatedEvaluationResource(n_prompts=3).test_attributes()
    assert len(attributes) == 3 and attributes == evaluation.model_copy(update={"n_prompts": 3}).test_attributes()
