"""Daring trainer: fine-tune the whole UNet with ``alpha * L_noise + beta * L_HOLA`` (paper Eq. 4).

    python -m cosmicman.model.train --config <json path or fsspec URL>
    torchrun --nproc_per_node=8 -m cosmicman.model.train --config <url>      # with "deepspeed": "zero2"

Read top to bottom:

- ``config``: ``TrainConfig``, the one schema; ``recipes``: named configs (tiny, released SD-1.5 / SDXL);
  ``variants``: the ablation overrides.
- ``loop``: ``train()``, the training loop (resume, steps, checkpoints, publish).
- ``step``: ``DaringTrainer``, the components, optimizer (or DeepSpeed engine) and one (micro-)step:
  encode (or read cached encodings), noise, UNet forward with HOLA capture, loss (noise + HOLA, min-SNR),
  backward, and on the accumulation boundary clip + AdamW (or the engine's step) + EMA.
- ``data``: ``DataStream``, the deterministic batch stream of one rank (square or aspect buckets, optionally
  from the latent cache) with what exact resume needs.
- ``ema``: the EMA of the weights; ``resume``: checkpoints and restoring from them; ``record``: the
  ``training_run.json`` record; ``publish``: the atomic publish of the output folder.
- ``__main__``: the command line and the Dagster Pipes entry.

Launched by Dagster Pipes (``PipesSubprocessClient`` / ``PipesK8sClient`` / the TrainJob launcher) rank 0
logs progress through the pipes context and reports one asset materialization; without ``--config`` every
rank fetches the config the pipes extras reference (its URL and sha256: ``cosmicman.core.launch_config``).
Other ranks only log to stderr.
Standalone it prints the summary JSON on stdout (progress on stderr).

Output (published to ``output_url`` by rank 0): a diffusers ``StableDiffusionPipeline`` (or
``StableDiffusionXLPipeline``) folder plus ``training_run.json`` (config, shard list, code version,
metrics). Publishing is atomic: files go to ``<output_url>.tmp-<id>`` first; on a local filesystem that
folder is renamed into place; on object stores the files are copied to the final prefix; then
``training_run.json`` is written there, last and only there -- it is the completion marker readers must check,
so a killed publish leaves no folder that holds one (the next publish removes its leftovers). With ``ema_decay > 0`` and
``save_ema`` (the defaults, as released) ``unet/`` holds the EMA weights (``metrics.published_unet``).

Checkpoints (``checkpoint_every`` N > 0) go to ``<checkpoint_url or output_url + ".checkpoints">``; see
``cosmicman.model.checkpoints``. ``resume=true`` continues from the latest complete one: the data stream is
deterministic (seeded shard order, shuffle buffer, rank split), and consumed samples are skipped *without
decoding* (their stream positions are recorded), so the run continues bit-for-bit as if uninterrupted.

Distribution: ``deepspeed`` names a ZeRO config (``zero2``, ``zero2_offload`` or a JSON path / URL, see
``cosmicman.model.distributed``); ranks come from the launcher's environment. Without it the trainer is
plain PyTorch on one device. Each rank reads whole shards of its own (unit u of the endless shard
sequence goes to rank u % world_size; see ``cosmicman.model.shards``), so the ranks together read the
dataset once per epoch; rank 0 publishes.

Loss options (schema defaults off; released values in brackets): ``noise_offset`` [0.05],
``caption_dropout`` per micro-batch [0.1] (the whole batch gets "" and no HOLA), ``snr_gamma`` (min-SNR
weighting), ``prediction_type`` (overrides the scheduler's; the published scheduler carries it),
``grad_accum`` [4], ``mixed_precision`` "bf16" [bf16], ``buckets`` [aspect buckets], ``cache_url``
(latent + text-embedding cache; see ``cosmicman.model.latent_cache``).
Per-sample draws (``cosmicman.model.sample_draw``): ``flip_p`` [0.5], ``group_dropout`` [0.1],
``late_group_dropout`` [0.5] for groups at protocol index >= ``late_group_from`` [14]; a ``cache_url`` run
makes no draws.

This package module imports nothing heavy: the Dagster code location reads ``config``, ``recipes`` and
``variants`` without loading torch.
"""
