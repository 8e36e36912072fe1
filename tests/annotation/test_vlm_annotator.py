"""The VLM annotator (BLIP-2 / InstructBLIP + LoRA) on tiny random models built in the test, offline.

Acceptance: predict and one LoRA fine-tune step on a tiny config. Categories are picked from
``load_protocol()`` (never by name): the protocol grows while this test stays valid.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from cosmicman.annotation.annotator import Annotator
from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.vlm_annotator import VLMAnnotator, build_tiny_vlm
from cosmicman.annotation.vlm_lora import VLMWeightsUnavailableError
from cosmicman.core.imageio import decode_image, sha256_hex
from cosmicman.core.protocol import load_protocol
from cosmicman.simulation.world import SyntheticWorld

STEPS, LR = 12, 1e-2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threading costs more than it gains (2-3x slower on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def people():
    """Three synthetic people: their samples, decoded images and sha256 ids."""
    world = SyntheticWorld(seed=1)
    samples = [world.sample(i, case="kept") for i in range(3)]
    images = [decode_image(s.image_bytes) for s in samples]
    shas = [sha256_hex(s.image_bytes) for s in samples]
    return samples, images, shas


@pytest.fixture(scope="module")
def labels(people):
    """A handful of labels: the first four root categories plus one child category that applies."""
    samples, _, shas = people
    protocol = load_protocol()
    roots = [c for c in protocol.categories if not c.requires][:4]
    children = [
        c
        for c in protocol.categories
        if c.requires and any(c.applies(s.attributes) and c.name in s.attributes for s in samples)
    ][:1]
    out = []
    for sha, s in zip(shas, samples):
        for cat in roots + children:
            if cat.applies(s.attributes) and cat.name in s.attributes:
                out.append(LabelRecord(sha, cat.name, s.attributes[cat.name], source="human", round=1))
    assert len(out) >= 6 and children
    return out


def _only(preds, cats):
    return [{k: v for k, v in p.items() if k in cats} for p in preds]


def _base_weights(model):
    """Base parameters by their pre-LoRA names (peft renames wrapped layers ``x.base_layer.weight``)."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k
    }


@pytest.fixture(scope="module")
def run(people, labels):
    """Round 0 -> LoRA round 1 on the tiny BLIP-2 (OPT) model, recording what the tests check."""
    _, images, shas = people
    image_map = dict(zip(shas, images))
    score_cats = sorted({lab.category for lab in labels})
    ann = build_tiny_vlm(seed=0)
    r = {"ann": ann, "image_map": image_map, "score_cats": score_cats}
    r["weights_before"] = _base_weights(ann.base.model)
    r["pred_before"] = ann.predict(images)
    r["scores_before"] = {c: ann.answer_scores(images, c) for c in score_cats}
    r["loss_before"] = ann.loss(labels, image_map)
    r["new"] = ann.finetune(labels, image_map, steps=STEPS, lr=LR, batch_size=8)
    r["loss_after"] = r["new"].loss(labels, image_map)
    r["weights_after"] = _base_weights(ann.base.model)
    return r


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------
def test_predict_in_vocabulary_and_hierarchy(run, people):
    protocol = load_protocol()
    ann, preds = run["ann"], run["pred_before"]
    assert isinstance(ann, Annotator)
    assert ann.version.startswith("vlm-r0-") and ann.round == 0 and ann.lineage == ()
    assert len(preds) == 3
    for pred in preds:
        protocol.validate_answers(pred)  # in vocabulary, exactly the applicable categories
        assert all(v in protocol.by_name[k].answers for k, v in pred.items())
    # A child asked alone: answered exactly where the annotator's own parent answer allows it.
    child = next(c for c in protocol.categories if c.requires)
    sub = ann.predict(people[1], [child.name])
    assert sub == [{k: v for k, v in p.items() if k == child.name} for p in preds]
    assert ann.predict([], [child.name]) == []
    with pytest.raises(KeyError):
        ann.predict(people[1][:1], ["no such category"])


def test_hierarchy_follows_the_annotators_own_answers(run, people):
    """With scores that make parents differ per image, children appear exactly when their requires hold."""
    protocol = load_protocol()
    ann = VLMAnnotator(run["ann"].base)

    def fake_scores(feats, questions):  # prefer answer (image + len(name)) % n: varies with the image
        out = []
        for i, cat in questions:
            s = np.zeros(len(cat.answers))
            s[(i + len(cat.name)) % len(cat.answers)] = 1.0
            out.append(s)
        return out

    ann._scores = fake_scores
    preds = ann.predict(people[1] + people[1][:1])  # 4 images
    parents = {p for c in protocol.categories for p in c.requires}
    answered_child = skipped_child = False
    for pred in preds:
        protocol.validate_answers(pred)
        for cat in protocol.categories:
            if cat.requires:
                assert (cat.name in pred) == cat.applies(pred)
                answered_child |= cat.name in pred
                skipped_child |= cat.name not in pred
    assert answered_child and skipped_child and parents


def test_image_side_computed_once_per_image(run, people):
    ann, images = run["ann"], people[1]
    calls = {"vision": [], "qformer": 0}
    model = ann.base.model
    h1 = model.vision_model.register_forward_hook(
        lambda m, a, kw, out: calls["vision"].append(int(kw["pixel_values"].shape[0])), with_kwargs=True
    )
    h2 = model.qformer.register_forward_hook(lambda m, a, o: calls.__setitem__("qformer", calls["qformer"] + 1))
    try:
        ann.predict(images, run["score_cats"])
    finally:
        h1.remove()
        h2.remove()
    assert calls == {"vision": [3], "qformer": 1}  # one batch of 3 images for all their questions
    # Rows read their own image: an image scored in a batch == scored alone; the images do differ.
    cat = run["score_cats"][0]
    batch = ann.answer_scores(images, cat)
    alone = ann.answer_scores(images[1:2], cat)[0]
    assert np.abs(batch[1] - alone).max() < 1e-4
    assert np.abs(batch[0] - batch[1]).max() > 1e-3
    # A hierarchy level mixes prompts of different lengths (left padding): same scores as one by one.
    protocol = load_protocol()
    roots = [c for c in protocol.categories if not c.requires][:6]
    assert len({len(c.question) for c in roots}) > 1
    level = [(i, c) for i in range(2) for c in roots]
    with ann.base.using(None), torch.no_grad():
        feats = ann.base.image_features(images)
        mixed = ann._scores(feats, level)
        single = [ann._scores(feats, [q])[0] for q in level]
    assert max(np.abs(a - b).max() for a, b in zip(mixed, single)) < 1e-4


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------
def test_finetune_returns_new_version_with_lineage(run):
    ann, new = run["ann"], run["new"]
    assert isinstance(new, VLMAnnotator) and new is not ann
    assert new.version != ann.version and new.version.startswith("vlm-r1-")
    assert new.round == 1 and new.lineage == (ann.version,)
    assert ann.adapter_digest is None and new.adapter_digest is not None
    assert new.base is ann.base  # base weights shared, not copied
    assert new.lora_config["r"] == 8 and new.lora_config["qformer"] is False


def test_finetune_trains_only_lora(run):
    new = run["new"]
    trainable = new.train_log["trainable"]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert any(".self_attn.q_proj.lora_A." in n for n in trainable)
    assert new.train_log["n_trainable"] == sum(v.numel() for v in new.adapter_state.values())
    before, after = run["weights_before"], run["weights_after"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base weights bit-identical
    assert not any(p.requires_grad for p in new.base.model.parameters())


def test_finetune_lowers_the_loss_on_its_triples(run):
    before, after, losses = run["loss_before"], run["loss_after"], run["new"].train_log["losses"]
    assert len(losses) == STEPS
    assert 10.0 < before < 14.0  # a random model: about -log(1/49409) = 10.8 per answer token
    assert after < 0.8 * before  # measured: 12.50 -> 7.43 with 12 steps of 8 triples
    assert losses[-1] < losses[0]


def test_old_annotator_unchanged_and_rounds_continue(run, people, labels):
    ann, new = run["ann"], run["new"]
    images, image_map, cats = people[1], run["image_map"], run["score_cats"]
    assert ann.predict(images, cats) == _only(run["pred_before"], cats)
    for c, s in run["scores_before"].items():
        assert np.array_equal(ann.answer_scores(images, c), s)  # bit-identical, adapters disabled
    cat = run["score_cats"][0]
    assert not np.array_equal(new.answer_scores(images, cat), run["scores_before"][cat])
    new_scores = new.answer_scores(images, cat)
    # Round 2 continues from round 1's adapter (lr 0: the weights carry over unchanged) ...
    r2 = new.finetune(labels, image_map, steps=1, lr=0.0)
    assert r2.round == 2 and r2.lineage == (ann.version, new.version) and r2.version != new.version
    assert all(torch.equal(a, b) for a, b in zip(r2.adapter_state.values(), new.adapter_state.values()))
    # ... and training it leaves round 1 alone.
    r2b = new.finetune(labels, image_map, steps=2, lr=LR)
    assert r2b.adapter_digest != new.adapter_digest
    assert np.array_equal(new.answer_scores(images, cat), new_scores)
    with pytest.raises(ValueError, match="continues the parent's adapter"):
        new.finetune(labels, image_map, steps=1, rank=4)
    assert ann.finetune([], image_map) is ann


def test_finetune_rejects_bad_labels(run, labels):
    ann, image_map = run["ann"], run["image_map"]
    lab = labels[0]
    with pytest.raises(KeyError):
        ann.finetune([lab], {})
    with pytest.raises(ValueError):
        ann.finetune([LabelRecord(lab.image_sha256, lab.category, "not an answer")], image_map)


# --------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------
def test_save_load_round_trip(run, people, tmp_path):
    ann, new, images = run["ann"], run["new"], people[1]
    path = tmp_path / "annotator.zip"
    blob = new.save(path)
    assert path.read_bytes() == blob == new.save()  # deterministic bytes
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert set(zf.namelist()) == {"meta.json", "adapter_model.safetensors", "adapter_config.json"}
        meta = json.loads(zf.read("meta.json"))
    assert meta["kind"] == "vlm" and meta["version"] == new.version and meta["round"] == 1
    assert meta["lineage"] == [ann.version] and meta["base"]["model_id"] == ann.base.model_id
    assert meta["lora"]["r"] == 8 and "language_model" in meta["lora"]["target_modules"]
    assert len(blob) < 200_000  # adapter only, no base weights

    loaded = VLMAnnotator.load(blob, base_model=ann)
    assert (loaded.version, loaded.lineage, loaded.round) == (new.version, new.lineage, new.round)
    pred_new = new.predict(images)
    load_protocol().validate_answers(pred_new[0])
    assert loaded.predict(images) == pred_new
    cat = run["score_cats"][0]
    assert np.array_equal(loaded.answer_scores(images, cat), new.answer_scores(images, cat))
    # Without a base: the recorded model id (here the tiny builder's) is loaded again.
    rebuilt = VLMAnnotator.load(path)
    assert rebuilt.base is not ann.base and rebuilt.version == new.version
    assert rebuilt.predict(images, run["score_cats"]) == _only(pred_new, run["score_cats"])
    assert np.array_equal(rebuilt.answer_scores(images, cat), new.answer_scores(images, cat))
    # Round 0 saves without adapter; a different base is refused.
    assert VLMAnnotator.load(ann.save(), base_model=ann).version == ann.version
    with pytest.raises(ValueError, match="base model mismatch"):
        VLMAnnotator.load(blob, base_model=build_tiny_vlm(seed=1))


def test_the_pipeline_loads_and_fine_tunes_it_like_the_probe(run, people, labels):
    """The assets load annotators through load_annotator and fine-tune through the annotator resource."""
    from cosmicman.annotation.annotator import load_annotator
    from cosmicman.resources.annotation import AnnotatorResource

    new, images = run["new"], people[1]
    loaded = load_annotator(new.save())
    assert isinstance(loaded, VLMAnnotator) and loaded.version == new.version
    assert loaded.predict(images, run["score_cats"]) == new.predict(images, run["score_cats"])
    resource = AnnotatorResource(kind="vlm", vlm_finetune_steps=2)
    tuned = resource.finetune(new, labels, run["image_map"], round=2)
    assert tuned.round == 2 and tuned.lineage[-1] == new.version
    with pytest.raises(ValueError, match="needs vlm_model"):
        AnnotatorResource(kind="vlm").base_annotator()


# --------------------------------------------------------------------------------------------------
# Production loading
# --------------------------------------------------------------------------------------------------
def test_production_loader_errors_clearly_without_weights(tmp_path):
    missing = tmp_path / "models" / "blip2-opt-2.7b"
    with pytest.raises(VLMWeightsUnavailableError) as err:
        VLMAnnotator.from_pretrained(missing)
    msg = str(err.value)
    assert str(missing) in msg and "config.json" in msg and "model.safetensors" in msg and "blip-2" in msg
    assert isinstance(err.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    with pytest.raises(VLMWeightsUnavailableError, match="no model weights"):
        VLMAnnotator.from_pretrained(empty)
    with pytest.raises(VLMWeightsUnavailableError, match="not available locally"):
        VLMAnnotator.from_pretrained("Salesforce/blip2-opt-2.7b")  # not in the local cache, no hub


def test_production_loader_on_a_staged_checkpoint(run, people, tmp_path):
    """``from_pretrained`` on a directory (model + tokenizer + image processor) = the in-memory model."""
    staged = build_tiny_vlm(seed=0).base.save_pretrained(tmp_path / "tiny-blip2")
    prod = VLMAnnotator.from_pretrained(staged, dtype="float32", device="cpu")
    assert prod.base.model_type == "blip-2" and prod.base.decoder_only
    assert prod.base.digest == run["ann"].base.digest and prod.version == run["ann"].version
    cats = run["score_cats"]
    assert prod.predict(people[1], cats) == _only(run["pred_before"], cats)
    on_dir = VLMAnnotator.load(run["new"].save(), base_model=prod)
    cat = cats[0]
    assert np.array_equal(on_dir.answer_scores(people[1], cat), run["new"].answer_scores(people[1], cat))


# --------------------------------------------------------------------------------------------------
# Other architectures: encoder-decoder language model (Flan-T5 class), InstructBLIP
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,language", [("blip-2", "t5"), ("instructblip", "opt")])
def test_other_architectures_predict_and_finetune(family, language, people, labels):
    protocol = load_protocol()
    images, image_map = people[1], dict(zip(people[2], people[1]))
    ann = build_tiny_vlm(seed=0, family=family, language=language)
    assert ann.base.decoder_only == (language == "opt")
    preds = ann.predict(images)
    for pred in preds:
        protocol.validate_answers(pred)
    before = ann.loss(labels, image_map)
    new = ann.finetune(labels, image_map, steps=6, lr=LR)
    assert new.version != ann.version and new.lineage == (ann.version,)
    assert new.loss(labels, image_map) < before
    cats = sorted({lab.category for lab in labels})
    assert ann.predict(images, cats) == _only(preds, cats)
    assert VLMAnnotator.load(new.save(), base_model=ann).predict(images, cats) == new.predict(images, cats)
