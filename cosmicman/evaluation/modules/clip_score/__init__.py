"""The ``clip_score`` evaluate module (loaded by path: ``evaluate.load(<this folder>)``)."""
