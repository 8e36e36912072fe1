"""The ``hpsv2`` evaluate module (loaded by path: ``evaluate.load(<this folder>)``)."""
