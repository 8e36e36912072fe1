"""The Label Studio config generated from the protocol: every category, its vocabulary, its conditions."""
import xml.etree.ElementTree as ET

from cosmicman.data.label_studio_config import label_studio_config
from cosmicman.data.protocol import load_protocol


def _conditions(root: ET.Element, target: ET.Element) -> dict[str, str]:
    """whenTagName -> whenChoiceValue of the views enclosing ``target``."""
    parents = {c: p for p in root.iter() for c in p}
    out, node = {}, parents.get(target)
    while node is not None:
        if node.get("visibleWhen") == "choice-selected":
            out[node.get("whenTagName")] = node.get("whenChoiceValue")
        node = parents.get(node)
    return out


def test_every_category_with_its_vocabulary_and_conditions():
    protocol = load_protocol()
    root = ET.fromstring(label_studio_config(protocol))
    assert root.find("Image").get("value") == "$image"
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert set(choices) == set(protocol.by_name)
    for cat in protocol.categories:
        c = choices[cat.name]
        assert c.get("toName") == "image" and c.get("choice") == "single"
        assert [x.get("value") for x in c.findall("Choice")] == [str(a) for a in cat.answers]
        assert _conditions(root, c) == {k: str(v) for k, v in cat.requires.items()}
        for parent, value in cat.requires.items():  # the condition names a real answer of the parent
            assert value in protocol.by_name[parent].answers
    assert any(cat.requires for cat in protocol.categories)  # the hierarchy is really exercised
