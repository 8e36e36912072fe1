"""The Label Studio config generated from the protocol: every category, its vocabulary, its conditions."""

import xml.etree.ElementTree as ET

from cosmicman.annotation.label_studio_config import label_studio_config
from cosmicman.core.protocol import load_protocol


def _conditions(root: ET.Element, target: ET.Element) -> dict[str, str]:
    """whenTagName -> whenChoiceValue of the views enclosing ``target``."""
    parents = {c: p for p in root.iter() for c in p}
    out, node = {}, parents.get(target)
    while node is not None:
        if node.get("visibleWhen") == "choice-selected":
            out[node.get("whenTagName")] = node.get("whenChoiceValue")
        node = parents.get(node)
    return out


def _part_view(root: ET.Element, target: ET.Element) -> ET.Element:
    parents = {c: p for p in root.iter() for c in p}
    node = parents[target]
    while not (node.get("name") or "").startswith("part_"):
        node = parents[node]
    return node


def test_every_category_with_its_vocabulary_and_conditions():
    protocol = load_protocol()
    root = ET.fromstring(label_studio_config(protocol))
    assert root.find("Image").get("value") == "$image"
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert len(list(root.iter("Choices"))) == len(choices) == 70
    assert set(choices) == set(protocol.by_name)
    for cat in protocol.categories:
        c = choices[cat.name]
        assert c.get("toName") == "image" and c.get("choice") == "single"
        assert [x.get("value") for x in c.findall("Choice")] == [str(a) for a in cat.answers]
        assert _conditions(root, c) == {k: str(v) for k, v in cat.requires.items()}
        assert _part_view(root, c).get("name") == f"part_{cat.part}".replace(" ", "_")
        for parent, value in cat.requires.items():  # the condition names a real answer of the parent
            assert value in protocol.by_name[parent].answers
    assert any(cat.requires for cat in protocol.categories)  # the hierarchy is really exercised


def test_one_view_per_part_in_protocol_order():
    protocol = load_protocol()
    root = ET.fromstring(label_studio_config(protocol))
    views = [v.get("name") for v in root.findall("View")]
    assert len(protocol.parts) == 18
    assert views == [f"part_{p}" for p in protocol.parts] + ["part_global"]  # every ATR part has questions
    for v in root.findall("View"):
        assert v.find("Header").get("value") == v.get("name")[len("part_") :]


def test_several_requirements_nest_one_view_each():
    """hair_style needs hair and no hat; neckline needs a top and no scarf: each requirement is one
    conditional view, nested, so the question shows only when all of them hold."""
    protocol = load_protocol()
    root = ET.fromstring(label_studio_config(protocol))
    parents = {c: p for p in root.iter() for c in p}
    multi = [c for c in protocol.categories if len(c.requires) > 1]
    assert {c.name for c in multi} >= {"hair_style", "hair_bangs", "neckline"}
    for cat in multi:
        node = next(c for c in root.iter("Choices") if c.get("name") == cat.name)
        chain = []
        node = parents[node]
        while node.get("visibleWhen") == "choice-selected":
            chain.append((node.get("whenTagName"), node.get("whenChoiceValue")))
            node = parents[node]
        # walked from the innermost view outwards; the config nests the requirements in name order
        assert sorted(chain, reverse=True) == chain and dict(chain) == dict(cat.requires)
        assert node.get("name") == f"part_{cat.part}"
    style = next(c for c in root.iter("Choices") if c.get("name") == "hair_style")
    assert _conditions(root, style) == {"hair_exists": "yes", "hat_exists": "no"}
