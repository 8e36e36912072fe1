"""The Label Studio labelling config, generated from the protocol (the protocol lives in one file).

One ``<Choices>`` per category, under a header per ATR part, with the category's answer vocabulary. The
existence -> detail hierarchy (``requires`` in ``protocol.yaml``) becomes conditional views: a category
that requires ``{parent: value}`` sits in ``<View visibleWhen="choice-selected" whenTagName="parent"
whenChoiceValue="value">``, nested once per requirement, so an annotator is asked for a garment's colour
only after saying the garment exists -- the same questions ``Protocol.applicable`` asks the models.
Task data: ``$image`` (an image URL, never base64).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cosmicman.core.protocol import Protocol, load_protocol


def label_studio_config(protocol: Protocol | None = None) -> str:
    protocol = protocol or load_protocol()
    root = ET.Element("View")
    ET.SubElement(root, "Image", name="image", value="$image", zoom="true")
    by_part: dict[str, list] = {}
    for cat in protocol.categories:
        by_part.setdefault(cat.part, []).append(cat)
    names = set(protocol.by_name)
    for part in [p for p in protocol.parts if p in by_part] + sorted(set(by_part) - set(protocol.parts)):
        view = ET.SubElement(root, "View", name=f"part_{part}".replace(" ", "_"))
        ET.SubElement(view, "Header", value=part)
        for cat in by_part[part]:
            parent = view
            for req, value in sorted(cat.requires.items()):
                if req not in names:
                    raise ValueError(f"category {cat.name!r} requires unknown category {req!r}")
                parent = ET.SubElement(
                    parent, "View", visibleWhen="choice-selected", whenTagName=req, whenChoiceValue=str(value)
                )
            ET.SubElement(parent, "Header", value=cat.question, size="6")
            choices = ET.SubElement(
                parent, "Choices", name=cat.name, toName="image", choice="single", showInline="true"
            )
            for answer in cat.answers:
                ET.SubElement(choices, "Choice", value=str(answer))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")
