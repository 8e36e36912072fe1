"""The ``fid`` evaluate module (loaded by path: ``evaluate.load(<this folder>)``)."""
