"""One training (micro-)step of the Daring trainer: ``DaringTrainer`` holds the components, the optimizer
(or DeepSpeed engine) and the EMA, and turns a batch into ``alpha * L_noise + beta * L_HOLA`` (min-SNR
weighting, noise offset and caption dropout optional), its backward pass and, on the accumulation
boundary, clipping + AdamW (or the engine's step) + EMA."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F

from cosmicman.model.alignment import DEFAULT_TIMESTEPS, AlignmentTally, mask_mass_share
from cosmicman.model.attention import HolaContext, cross_attention_query_counts, install_capture, uninstall_capture
from cosmicman.model.checkpoints import load_engine_checkpoint
from cosmicman.model.components import Components
from cosmicman.model.conditioning import TextConditioner, TextConditioning, sdxl_time_ids
from cosmicman.model.distributed import DistEnv, load_deepspeed_config
from cosmicman.model.hola import hola_loss, span_token_columns
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.ema import EMA
from cosmicman.model.train.noising import caption_dropped, min_snr_weights, offset_noise


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf: training stops, nothing is published."""


def resolve_device(name: str, dist: DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # one GPU per rank; an explicit index is also what torch.cuda.set_device needs
        name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def build_components(cfg: TrainConfig) -> Components:
    from cosmicman.model.activations import ActivationConfig, apply_activation
    from cosmicman.model.components import build_tiny_components, load_components

    if cfg.pretrained:
        comps = load_components(cfg.pretrained)
    else:
        comps = build_tiny_components(
            cfg.seed if cfg.tiny_seed is None else cfg.tiny_seed, resolution=cfg.resolution, family=cfg.family
        )
    # Prime: every SiLU site (SDXL's hard-coded add_embedding included) gets the configured activation;
    # the choice is recorded in the UNet config and survives save / load_unet_with_activation.
    apply_activation(comps.unet, ActivationConfig(cfg.act_fn, cfg.ff_act_fn))
    return comps


class DaringTrainer:
    """Components, optimizer (or DeepSpeed engine), EMA and one training (micro-)step.

    ``step(batch)`` takes a collated batch -- decoded (``pixel_values``, ``input_ids``) or from the latent
    cache (``latent_mean``, ``latent_std``, ``hidden``, ``pooled``) -- and returns the step record on an
    accumulation boundary (after the optimizer step), None before it. Random draws per micro-batch, in
    order: latent sample, noise, offset noise, timesteps (device generator); caption dropout (CPU
    generator, so deciding it never waits for the device)."""

    def __init__(
        self,
        cfg: TrainConfig,
        dist: DistEnv | None = None,
        comps: Components | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist or DistEnv()
        self.say = say or (lambda msg: None)
        self.device = resolve_device(cfg.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + self.dist.rank)
        self.cpu_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 + self.dist.rank)

        self.comps = comps or build_components(cfg)
        c = self.comps
        if cfg.prediction_type:
            c.scheduler.register_to_config(prediction_type=cfg.prediction_type)  # also what gets published
        for module in (c.unet, c.vae, *c.text_encoders):
            module.to(self.device)
        self.unet = c.unet.train()
        self.vae = c.vae.eval().requires_grad_(False)
        for enc in c.text_encoders:
            enc.eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.conditioner = TextConditioner(c)
        self.vae_factor = 2 ** (len(self.vae.config["block_out_channels"]) - 1)
        self.scaling = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.pred_type = c.scheduler.config["prediction_type"]
        if self.pred_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.pred_type!r}")
        self.n_t = c.scheduler.config["num_train_timesteps"]
        self.alphas_cumprod = c.scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        tok = c.tokenizers[0]
        self.max_len = tok.model_max_length if tok.model_max_length < 10_000 else 77
        self.store = install_capture(self.unet) if cfg.beta > 0 else None
        self.empty_cond = (
            self.conditioner.encode(
                tok(
                    "", padding="max_length", max_length=self.max_len, truncation=True, return_tensors="pt"
                ).input_ids.to(self.device)
            )
            if cfg.caption_dropout > 0
            else None
        )

        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.engine: Any = None  # the DeepSpeed engine, when configured
        self.model: Any = self.unet
        self.model_dtype: torch.dtype | None = None  # inputs cast to it (DeepSpeed bf16 engine)
        if cfg.deepspeed:
            self._init_deepspeed(cfg.deepspeed)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.micro = 0
        self.steps_done = 0
        self._acc: list[torch.Tensor] = []
        self._dropped = 0

    def _init_deepspeed(self, name: str) -> None:
        import deepspeed

        cfg = self.cfg
        ds_cfg = load_deepspeed_config(
            name,
            micro_batch=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            grad_clip=cfg.max_grad_norm,
            bf16=cfg.mixed_precision == "bf16",
        )
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            deepspeed.init_distributed()
        engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.unet, optimizer=self.optimizer, model_parameters=self.params, config=ds_cfg
        )
        self.engine = self.model = engine
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        if ds_cfg["bf16"]["enabled"]:
            self.model_dtype = torch.bfloat16
        self.say(
            f"DeepSpeed ZeRO-{ds_cfg['zero_optimization'].get('stage', 0)} on {self.dist.world_size} "
            f"rank(s), bf16={ds_cfg['bf16']['enabled']}, offload="
            f"{ds_cfg['zero_optimization'].get('offload_optimizer', {}).get('device', 'none')}"
        )

    # -- pieces of a step ---------------------------------------------------------------------------
    def hola_layers(self, image_hw: tuple[int, int]) -> list[str]:
        """Cross-attention layers whose maps are at (H/f, W/f) for an image of ``image_hw`` pixels."""
        f = self.cfg.hola_map_factor
        want = (image_hw[0] // f) * (image_hw[1] // f)
        counts = cross_attention_query_counts(
            self.unet, (image_hw[0] // self.vae_factor, image_hw[1] // self.vae_factor)
        )
        return sorted(n for n, q in counts.items() if q == want)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], posterior_mean: bool = False) -> tuple[torch.Tensor, TextConditioning]:
        """(latents * scaling, text conditioning): sampled (or the mean) from the cached posterior, or
        encoded here."""
        if "latent_mean" in batch:
            latents = batch["latent_mean"].to(self.device, non_blocking=True)
            if not posterior_mean:
                std = batch["latent_std"].to(self.device, non_blocking=True)
                # the same draw DiagonalGaussianDistribution.sample makes
                latents = latents + std * torch.randn(
                    latents.shape, generator=self.gen, device=self.device, dtype=latents.dtype
                )
            cond = TextConditioning(batch["hidden"], batch.get("pooled")).to(self.device)
        else:
            posterior = self.vae.encode(batch["pixel_values"].to(self.device, non_blocking=True)).latent_dist
            latents = posterior.mean if posterior_mean else posterior.sample(generator=self.gen)
            cond = self.conditioner.encode(batch["input_ids"].to(self.device, non_blocking=True))
        return latents * self.scaling, cond

    def encode_for_cache(
        self, pixels: torch.Tensor, ids: torch.Tensor, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device)).latent_dist
            cond = self.conditioner.encode(ids.to(self.device))
        out = {"latent_mean": dist.mean, "latent_std": dist.std, "hidden": cond.hidden}
        if cond.pooled is not None:
            out["pooled"] = cond.pooled
        return out

    def _unet_inputs(
        self,
        batch: dict[str, Any],
        latents: torch.Tensor,
        cond: TextConditioning,
        capture: bool,
        token_columns: tuple[int, ...] | None = None,
    ) -> tuple[dict[str, Any], HolaContext | None]:
        """UNet keyword arguments (conditioning, SDXL time ids, the HOLA context when capturing, keeping
        only ``token_columns`` of the maps when given)."""
        image_hw = (latents.shape[-2] * self.vae_factor, latents.shape[-1] * self.vae_factor)
        time_ids = None
        if self.comps.family == "sdxl":
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], image_hw)
        kwargs = self.conditioner.unet_kwargs(cond, time_ids, self.model_dtype)
        ctx = None
        if capture:
            f = self.cfg.hola_map_factor
            ctx = HolaContext(
                map_hw=(image_hw[0] // f, image_hw[1] // f), key_length=self.max_len, token_columns=token_columns
            )
            kwargs["cross_attention_kwargs"] = {"hola_ctx": ctx}
        return kwargs, ctx

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Forward and backward of one micro-batch: (loss, noise loss, HOLA loss, caption dropped)."""
        cfg = self.cfg
        latents, cond = self.encode(batch)
        B = latents.shape[0]
        dropped = caption_dropped(cfg.caption_dropout, self.cpu_gen)  # empty prompt and no HOLA, as released
        if dropped and self.empty_cond is not None:  # set whenever caption_dropout > 0
            cond = self.empty_cond.expand(B)
        noise = offset_noise(latents.shape, cfg.noise_offset, self.gen, latents.dtype)
        # diffusers annotates timesteps as IntTensor; they are int64, as its own training scripts draw them
        t = cast(torch.IntTensor, torch.randint(0, self.n_t, (B,), generator=self.gen, device=self.device).long())
        sched = self.comps.scheduler
        noisy = sched.add_noise(latents, noise, t)
        target = noise if self.pred_type == "epsilon" else sched.get_velocity(latents, noise, t)

        # HOLA reads only the span tokens' columns, and nothing of a batch whose caption was dropped
        capture = self.store is not None and not dropped
        columns = span_token_columns(batch["spans"], self.max_len) if capture else None
        kwargs, ctx = self._unet_inputs(batch, latents, cond, capture=capture, token_columns=columns)
        if self.store is not None:
            self.store.clear()
        inp = noisy if self.model_dtype is None else noisy.to(self.model_dtype)
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16" and self.engine is None
        ):
            pred = self.model(inp, t, **kwargs).sample
        if cfg.snr_gamma is None:
            noise_loss = F.mse_loss(pred.float(), target.float())
        else:  # min-SNR-gamma (Hang et al. 2023), as diffusers' train_text_to_image.py
            ac = self.alphas_cumprod[t]
            w = min_snr_weights(ac / (1.0 - ac), cfg.snr_gamma, self.pred_type)
            per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
            noise_loss = (per * w).mean()
        if self.store is not None and ctx is not None:  # ctx: set whenever capturing
            if not self.store.maps:
                raise ValueError(
                    f"no cross-attention layer has {ctx.map_hw[0]}x{ctx.map_hw[1]} queries for "
                    f"latents of {tuple(latents.shape[-2:])} (hola_map_factor={cfg.hola_map_factor})"
                )
            hola = hola_loss(
                self.store.maps,
                batch["group_masks"],
                batch["spans"],
                reduction=cfg.hola_reduction,
                map_hw=ctx.map_hw,
                token_columns=ctx.token_columns,
            )
        else:
            hola = noise_loss.new_zeros(())
        loss = cfg.alpha * noise_loss + cfg.beta * hola
        if self.engine is not None:
            # no finiteness check here (it would stall the device mid-step): a non-finite step is caught
            # right after the engine's update, before anything is checkpointed or published
            self.engine.backward(loss)
        else:
            if self.micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
            (loss / cfg.grad_accum).backward()
        return loss.detach(), noise_loss.detach(), hola.detach(), dropped

    def step(self, batch: dict[str, Any]) -> dict[str, float] | None:
        loss, noise_loss, hola, dropped = self.micro_step(batch)
        self._acc.append(torch.stack([loss, noise_loss, hola.float()]))
        self._dropped += int(dropped)
        self.micro += 1
        if self.engine is not None:
            self.engine.step()  # steps the optimizer on the accumulation boundary only
        if self.micro < self.cfg.grad_accum:
            return None
        self.micro = 0
        if self.engine is not None:
            gnorm = torch.as_tensor(self.engine.get_global_grad_norm() or 0.0, dtype=torch.float32)
        else:
            if self.cfg.max_grad_norm and self.cfg.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            else:
                gnorm = torch.linalg.vector_norm(
                    torch.stack([p.grad.detach().float().norm() for p in self.params if p.grad is not None])
                )
        means = torch.stack(self._acc).mean(dim=0)
        if self.dist.world_size > 1:
            # losses reported as the mean over ranks; a NaN on any rank reaches all, so all stop together
            torch.distributed.all_reduce(means)
            means = means / self.dist.world_size
        values = torch.cat([means, gnorm.detach().float().reshape(1).to(means.device)]).tolist()  # one sync
        self._acc = []
        if not all(map(math.isfinite, values)):
            raise NonFiniteLossError(
                f"non-finite loss at step {self.steps_done + 1}/{self.cfg.steps} "
                f"(loss={values[0]} noise={values[1]} hola={values[2]} "
                f"grad_norm={values[3]}; batch keys {batch['keys']}); "
                "stopping without publishing"
            )
        if self.engine is None:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.params)
        self.steps_done += 1
        rec = {"loss": values[0], "noise": values[1], "hola": values[2], "grad_norm": values[3]}
        if self.cfg.caption_dropout > 0:
            rec["caption_dropped"] = self._dropped
        self._dropped = 0
        return rec

    # -- state ----------------------------------------------------------------------------------------
    def generators(self) -> dict[str, torch.Generator]:
        return {"device": self.gen, "cpu": self.cpu_gen}

    def shared_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ema": self.ema.state_dict() if self.ema is not None else None}
        if self.engine is None:
            state.update(unet=self.unet.state_dict(), optimizer=self.optimizer.state_dict())
        return state

    def load_shared_state(self, state: dict[str, Any], ckpt_path: str) -> None:
        if self.engine is not None:
            load_engine_checkpoint(ckpt_path, self.engine)
        else:
            self.unet.load_state_dict(state["unet"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint holds no EMA state but ema_decay > 0")
            self.ema.load_state_dict(state["ema"])

    def publish_weights(self) -> str:
        """EMA weights into the UNet when those are published; returns which weights it now holds."""
        if self.ema is not None and self.cfg.save_ema:
            self.ema.copy_to(self.params)
            return "ema"
        return "raw"

    @torch.no_grad()
    def attention_alignment(
        self, batches: list[dict[str, Any]], timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, seed: int = 0
    ) -> dict[str, Any]:
        """Share of each group's cross-attention mass inside its mask (``cosmicman.model.alignment``), on
        ``batches`` (posterior means noised at ``timesteps``, fixed seed), whatever ``beta`` was."""
        store = self.store if self.store is not None else install_capture(self.unet)
        was_training = self.unet.training
        self.unet.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tally = AlignmentTally()
        try:
            for batch in batches:
                latents, cond = self.encode(batch, posterior_mean=True)
                kwargs, ctx = self._unet_inputs(batch, latents, cond, capture=True)
                shares = []
                for step_t in timesteps:
                    noise = torch.randn(latents.shape, generator=gen, device=self.device, dtype=latents.dtype)
                    t = cast(
                        torch.IntTensor,
                        torch.full((latents.shape[0],), int(step_t), device=self.device, dtype=torch.long),
                    )
                    noisy = self.comps.scheduler.add_noise(latents, noise, t)
                    store.clear()
                    with torch.autocast(
                        self.device.type, dtype=torch.bfloat16, enabled=self.cfg.mixed_precision == "bf16"
                    ):
                        self.unet(noisy if self.model_dtype is None else noisy.to(self.model_dtype), t, **kwargs)
                    share, area, valid = mask_mass_share(
                        store.maps, batch["group_masks"].to(self.device), batch["spans"].to(self.device)
                    )
                    shares.append(share)
                tally.add(torch.stack(shares).mean(0), area, valid, batch["group_names"])
        finally:
            if self.store is None:
                uninstall_capture(self.unet)
            self.unet.train(was_training)
        return {
            **tally.summary(),
            "timesteps": list(timesteps),
            "batches": len(batches),
            "map_factor": self.cfg.hola_map_factor,
        }

    def finish(self) -> None:
        """Stock attention processors back and the UNet in eval mode, ready to be saved."""
        if self.store is not None:
            uninstall_capture(self.unet)
        if self.cfg.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()
        self.unet.eval()
