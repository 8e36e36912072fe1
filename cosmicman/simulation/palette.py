"""What the world's people and scenes are made of: ATR label ids, colours, proportions, placements."""

from __future__ import annotations

# ATR label ids (index in protocol.yaml ``parts``).
(
    BG,
    HAT,
    HAIR,
    SUNGLASSES,
    UPPER,
    SKIRT,
    PANTS,
    DRESS,
    BELT,
    LSHOE,
    RSHOE,
    FACE,
    LLEG,
    RLEG,
    LARM,
    RARM,
    BAG,
    SCARF,
) = range(18)

# Clearly distinct RGB per protocol colour name.
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (238, 238, 232),
    "gray": (128, 128, 128),
    "red": (200, 28, 36),
    "orange": (242, 132, 24),
    "yellow": (240, 214, 40),
    "green": (36, 146, 60),
    "blue": (30, 72, 196),
    "purple": (118, 48, 160),
    "pink": (240, 150, 190),
    "brown": (112, 70, 36),
    "beige": (218, 198, 158),
}
HAIR_COLORS = {
    "black": (24, 20, 20),
    "brown": (92, 56, 30),
    "blonde": (226, 194, 116),
    "red": (168, 58, 24),
    "gray": (168, 168, 166),
}
SKIN_TONES = {"light": (240, 204, 178), "medium": (200, 148, 108), "dark": (134, 90, 62)}
# Plain studio backdrops by protocol colour name (muted, so that the exposure rule still holds when dim).
BACKDROPS = {
    "white": (222, 222, 218),
    "gray": (150, 152, 156),
    "beige": (212, 196, 168),
    "blue": (130, 164, 214),
    "green": (150, 196, 150),
    "pink": (232, 178, 198),
    "yellow": (236, 214, 110),
    "purple": (180, 156, 208),
}
STOCKINGS = {"black": (34, 32, 36), "white": (236, 234, 228), "red": (178, 30, 40)}
SOLES = {"light": (236, 236, 232), "dark": (46, 42, 40)}
SUNGLASSES_TINTS = {"black": (20, 22, 26), "brown": (90, 50, 18), "blue": (22, 40, 120)}
LIPSTICK = (192, 30, 56)
NECKLACE = (224, 186, 72)
# Image brightness per ``lighting`` answer: the range a factor is drawn from.
LIGHTING = {"bright": (0.98, 1.04), "dim": (0.62, 0.7)}
# Horizontal placement per ``person_position`` answer (viewer's left / right): centre as a fraction of the width.
POSITIONS = {"left": 0.36, "center": 0.5, "right": 0.64}
PLAIN_BACKGROUNDS = (
    (176, 196, 214),
    (214, 206, 186),
    (190, 214, 196),
    (200, 190, 210),
    (160, 168, 176),
    (226, 218, 200),
    (150, 176, 190),
)
WALLS = ((222, 214, 196), (196, 206, 214), (214, 198, 186), (206, 214, 196), (184, 184, 190))
FLOORS = ((132, 96, 64), (150, 144, 136), (108, 84, 66), (170, 150, 120))
GROUNDS = ((88, 140, 70), (140, 138, 132), (176, 160, 120), (74, 118, 62))

# Proportions per age: (head heights per body, person height as a fraction of the canvas height,
# shoulder half-width in head heights).
AGE_BODY = {"child": (5.0, 0.63, 0.8), "adult": (7.0, 0.84, 1.0), "elderly": (6.9, 0.81, 0.97)}
BODY_SHAPE = {"slim": 0.84, "average": 1.0, "heavy": 1.3}
