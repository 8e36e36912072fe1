"""The ``kid`` evaluate module (loaded by path: ``evaluate.load(<this folder>)``)."""
