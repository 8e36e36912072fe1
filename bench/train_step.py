"""Step-time ratios of the Daring trainer against its own baselines, measured in one run.

    .venv/bin/python bench/train_step.py                      # CPU preset (2 cores: about 6 min)
    python bench/train_step.py --preset sd15 --batch 8 --bf16 --deepspeed zero2   # GPU (bench/gpu_check.sh)

Same components (copies of one random init), same batches, same settings in every variant:

  A  our trainer, HOLA off, encoders in the step     B  our trainer, HOLA on (beta 1)
  C  a hand-written diffusers-style loop doing A's work: VAE + text encoder, UNet forward/backward,
     grad clipping, AdamW (through the same DeepSpeed engine when --deepspeed)
  D  our trainer on cached latents + text embeddings  E  a bare UNet step on ready tensors
     (forward, backward, AdamW)

and prints  hola_overhead = B / A,  trainer_overhead = A / C,  cached_vs_unet_only = D / E (targets: each
<= 1.05). The bench runs in rounds (--rounds, at least 3 for a spread). In a round, each group of variants
(A, B, C, then D, E) is set up together from fresh copies of the components, and their steps are taken in
turn -- A B C A B C ... after a warm-up -- so that other work on a shared machine slows neighbouring
steps of every variant alike; rounds alternate the order (A..E, then E..A). A variant's figure in a round
is the median of its synchronised step times; each ratio is taken within its round and printed as its
median over the rounds with the range beside it, e.g. ``hola_overhead: 1.031 (spread 1.012-1.046 over 4
rounds)``. The load average at start and end says whether other work shared the machine.

Component presets: ``sd15`` is SD-1.5 itself (UNet 859.5M, VAE, CLIP-L text encoder) at 512 px; ``cpu`` is
SD-1.5's layout with a quarter of the channels at 256 px, whose VAE-encode : UNet-step FLOP proportion
(0.435) is close to SD-1.5's at 512 (0.458). The script prints the proportions it measured
(torch.utils.flop_counter on meta tensors) before timing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmicman.core.tokenizer import load_clip_tokenizer  # noqa: E402
from cosmicman.model.components import Components  # noqa: E402
from cosmicman.model.train.config import TrainConfig  # noqa: E402
from cosmicman.model.train.step import DaringTrainer  # noqa: E402

CAPTION = "a woman, long black hair, red t-shirt, blue jeans, white sneakers"
GROUPS = ["a woman", "long black hair", "red t-shirt", "blue jeans", "white sneakers"]


def sd15_configs(div: int):
    from transformers import CLIPTextConfig

    groups = 32 // div if div <= 8 else 4
    unet = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=tuple(c // div for c in (320, 640, 1280, 1280)),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768 // div,
        attention_head_dim=8,
        norm_num_groups=groups,
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=512,
        layers_per_block=2,
        block_out_channels=tuple(c // div for c in (128, 256, 512, 512)),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=groups,
    )
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768 // div,
        intermediate_size=3072 // div,
        num_hidden_layers=12,
        num_attention_heads=12 // min(div, 4) if div > 1 else 12,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return unet, vae, text


PRESETS = {"cpu": (4, 256), "sd15": (1, 512), "smoke": (8, 128)}  # smoke: a quick check of the wiring


def build(preset: str, seed: int = 0, device: str = "meta") -> Components:
    # not `from diffusers`: there they are typed as dummies
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextModel

    u, v, t = sd15_configs(PRESETS[preset][0])
    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae, te = UNet2DConditionModel(**u), AutoencoderKL(**v), CLIPTextModel(t)
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
    )
    return Components(unet, vae, [te], [load_clip_tokenizer()], sched, "sd")


def flop_proportions(preset: str) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    c = build(preset, device="meta")
    res = PRESETS[preset][1]
    x = torch.empty(1, 3, res, res, device="meta")
    ids = torch.zeros(1, 77, dtype=torch.long, device="meta")
    out = {}
    with FlopCounterMode(display=False) as f:
        c.vae.encode(x)
    out["vae_encode"] = f.get_total_flops()
    with FlopCounterMode(display=False) as f:
        h = c.text_encoders[0](ids)[0]
    out["text_encode"] = f.get_total_flops()
    with FlopCounterMode(display=False) as f:
        c.unet(
            torch.empty(1, 4, res // 8, res // 8, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"), h
        ).sample.sum().backward()
    out["unet_fwd_bwd"] = f.get_total_flops()
    return out


def make_batches(n: int, batch: int, res: int, map_factor: int, seed: int = 0) -> list[dict]:
    tok = load_clip_tokenizer()
    ids = tok(CAPTION, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
    spans = []
    for text in GROUPS:
        sub = tok(text, add_special_tokens=False).input_ids
        s = next(i for i in range(77) if ids[i : i + len(sub)].tolist() == sub)
        spans.append([s, s + len(sub)])
    g = torch.Generator().manual_seed(seed)
    m = res // map_factor
    out = []
    for _ in range(n):
        masks = torch.zeros(batch, len(GROUPS), m, m)
        for b in range(batch):
            for k in range(len(GROUPS)):
                y0, x0 = torch.randint(0, m // 2, (2,), generator=g).tolist()
                masks[b, k, y0 : y0 + m // 2, x0 : x0 + m // 3] = 1
        out.append(
            {
                "keys": [f"s{i}" for i in range(batch)],
                "pixel_values": torch.rand(batch, 3, res, res, generator=g) * 2 - 1,
                "input_ids": ids.expand(batch, -1).clone(),
                "group_masks": masks,
                "spans": torch.tensor(spans).expand(batch, -1, -1).clone(),
            }
        )
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class Variant:
    """One way of taking a training step; ``setup`` builds it from fresh copies of the components."""

    def __init__(self, name: str, args, comps: Components, batches: list[dict]) -> None:
        self.name, self.args, self.base, self.batches = name, args, comps, batches
        self.base_batches = batches  # D swaps in cached batches for its block and restores these
        self.i = 0

    def cfg(self, **kw) -> TrainConfig:
        a = self.args
        return TrainConfig(
            shards=["unused"],
            output_url="unused",
            resolution=PRESETS[a.preset][1],
            batch_size=a.batch,
            lr=1e-5,
            hola_map_factor=16,
            ema_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=a.gradient_checkpointing,
            mixed_precision="bf16" if a.bf16 else "no",
            deepspeed=a.deepspeed,
            device=a.device,
            **kw,
        )

    def setup(self) -> None:
        a = self.args
        comps = copy.deepcopy(self.base)
        if self.name in "ABD":
            self.trainer = DaringTrainer(self.cfg(beta=1.0 if self.name == "B" else 0.0), comps=comps)
            self.device = self.trainer.device
            if self.name == "D":
                self.batches = [self.cached(b) for b in self.batches]
            return
        # C and E: the hand-written loops, on the same device / engine / precision
        self.device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        for module in (comps.unet, comps.vae, comps.text_encoders[0]):
            module.to(self.device)
        self.unet = comps.unet.train()
        self.vae = comps.vae.eval().requires_grad_(False)
        self.te = comps.text_encoders[0].eval().requires_grad_(False)
        if a.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.sched = comps.scheduler
        self.opt = torch.optim.AdamW(
            self.unet.parameters(), lr=1e-5, weight_decay=1e-2, fused=self.device.type == "cuda"
        )
        self.model, self.engine, self.dtype = self.unet, None, None
        if a.deepspeed:
            import deepspeed

            from cosmicman.model.distributed import load_deepspeed_config

            ds = load_deepspeed_config(a.deepspeed, micro_batch=a.batch, grad_accum=1, grad_clip=1.0, bf16=a.bf16)
            if self.name == "E":
                ds["gradient_clipping"] = 0.0
            self.engine, self.opt, _, _ = deepspeed.initialize(
                model=self.unet, optimizer=self.opt, model_parameters=list(self.unet.parameters()), config=ds
            )
            self.model = self.engine
            self.dtype = torch.bfloat16 if a.bf16 else None
        self.gen = torch.Generator(device=self.device).manual_seed(0)
        if self.name == "E":  # ready tensors: latents, timesteps, conditioning, target
            self.ready = []
            for b in self.batches:
                lat, enc = self.encode(b)
                noise = torch.randn(lat.shape, generator=self.gen, device=self.device)
                t = cast(
                    torch.IntTensor, torch.randint(0, 1000, (lat.shape[0],), generator=self.gen, device=self.device)
                )
                self.ready.append((self.sched.add_noise(lat, noise, t), t, enc, noise))

    @torch.no_grad()
    def encode(self, b):
        lat = self.vae.encode(b["pixel_values"].to(self.device)).latent_dist.sample(generator=self.gen) * 0.18215
        return lat, self.te(b["input_ids"].to(self.device))[0]

    @torch.no_grad()
    def cached(self, b):
        t = self.trainer
        out = t.encode_for_cache(b["pixel_values"], b["input_ids"], b)
        return {**{k: v for k, v in b.items() if k not in ("pixel_values", "input_ids")}, **out}

    def unet_step(self, noisy, t, enc, target, clip: bool) -> None:
        cast = (lambda x: x.to(self.dtype)) if self.dtype else (lambda x: x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16 and not self.engine):
            pred = self.model(cast(noisy), t, cast(enc)).sample
        loss = F.mse_loss(pred.float(), target.float())
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
            return
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        if self.name in "ABD":
            self.trainer.step(b)
        elif self.name == "C":  # a diffusers-style train_text_to_image step
            lat, enc = self.encode(b)
            noise = torch.randn(lat.shape, generator=self.gen, device=self.device)
            t = cast(torch.IntTensor, torch.randint(0, 1000, (lat.shape[0],), generator=self.gen, device=self.device))
            self.unet_step(self.sched.add_noise(lat, noise, t), t, enc, noise, clip=True)
        else:
            noisy, t, enc, target = self.ready[self.i % len(self.ready)]
            self.unet_step(noisy, t, enc, target, clip=False)

    def timed_step(self) -> float:
        """Seconds of one synchronised step."""
        t0 = time.perf_counter()
        self.step()
        sync(self.device)
        return time.perf_counter() - t0

    def teardown(self) -> None:
        engine = getattr(self, "engine", None) or getattr(getattr(self, "trainer", None), "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()  # DeepSpeed keeps hooks and buffers alive otherwise
        for name in ("trainer", "unet", "vae", "te", "opt", "engine", "model", "ready"):
            if hasattr(self, name):
                delattr(self, name)
        if self.name == "D":
            self.batches = self.base_batches
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


DESCRIPTIONS = {
    "A": "trainer, HOLA off",
    "B": "trainer, HOLA on",
    "C": "hand-written loop",
    "D": "trainer, cached latents+text",
    "E": "bare UNet step",
}


#: variants alive together, their steps interleaved; every ratio is between two variants of one group
STEP_GROUPS = ("ABC", "DE")


def time_group(group: list[Variant], warmup: int, steps: int) -> tuple[dict[str, list[float]], float]:
    """Set up the variants of ``group`` together, take their steps in turn (warm-up, then ``steps`` timed
    steps each) and tear them down: a burst of other work on the machine hits neighbouring steps of every
    variant alike. Returns each variant's step times and the peak memory (all of them alive)."""
    for v in group:
        v.setup()
    for _ in range(warmup):
        for v in group:
            v.step()
    for v in group:
        sync(v.device)
    cuda = group[0].device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(group[0].device)
    times: dict[str, list[float]] = {v.name: [] for v in group}
    for _ in range(steps):
        for v in group:
            times[v.name].append(v.timed_step())
    peak = torch.cuda.max_memory_allocated(group[0].device) / 2**30 if cuda else rss_gb()
    for v in group:
        v.teardown()
    return times, peak


#: (printed name, numerator variant, denominator variant); other tools grep ``name: value``
RATIOS = (("hola_overhead", "B", "A"), ("trainer_overhead", "A", "C"), ("cached_vs_unet_only", "D", "E"))


def load_average() -> str:
    """1, 5 and 15 minute load averages: above the core count, other work shared the machine."""
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) + f" ({os.cpu_count()} cores)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--deepspeed", default=None, help="zero2 | zero2_offload | JSON path")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds, A..E and E..A alternately; each ratio is its median over the rounds (3+ for a spread)",
    )
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    t_start = time.perf_counter()
    print(f"load average at start {load_average()}", flush=True)
    if args.deepspeed and "RANK" not in os.environ:
        from cosmicman.model.train.loop import ensure_dist_env

        ensure_dist_env(TrainConfig(shards=["x"], output_url="x", deepspeed=args.deepspeed))

    fl = flop_proportions(args.preset)
    res = PRESETS[args.preset][1]
    print(
        f"preset {args.preset}: {res}px, per image: VAE encode {fl['vae_encode'] / 1e9:.1f} GFLOP, text "
        f"encoder {fl['text_encode'] / 1e9:.1f}, UNet fwd+bwd {fl['unet_fwd_bwd'] / 1e9:.1f}; VAE/UNet "
        f"{fl['vae_encode'] / fl['unet_fwd_bwd']:.3f} (SD-1.5 at 512: 0.458), text/UNet "
        f"{fl['text_encode'] / fl['unet_fwd_bwd']:.4f}"
    )
    device = "cpu" if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()) else "cuda"
    comps = build(args.preset, device="cpu")
    print(
        f"UNet {sum(p.numel() for p in comps.unet.parameters()) / 1e6:.1f}M params, batch {args.batch}, "
        f"device {device}{' ' + torch.cuda.get_device_name() if device == 'cuda' else ''}, bf16={args.bf16}, "
        f"deepspeed={args.deepspeed}, gradient checkpointing={args.gradient_checkpointing}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    batches = make_batches(3, args.batch, res, 16)
    variants = {n: Variant(n, args, comps, batches) for n in "ABCDE"}
    results: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(args.rounds):
        forward = r % 2 == 0
        for group in STEP_GROUPS if forward else STEP_GROUPS[::-1]:
            order = group if forward else group[::-1]
            times, peak = time_group([variants[n] for n in order], args.warmup, args.steps)
            for n in order:
                results[n].append(statistics.median(times[n]))
                print(
                    f"  round {r + 1} {n} {DESCRIPTIONS[n]:<30} median {results[n][-1] * 1000:8.1f} ms/step "
                    f"(steps {min(times[n]) * 1000:.0f}-{max(times[n]) * 1000:.0f})",
                    flush=True,
                )
            print(f"  round {r + 1} {order}: {'peak GPU' if device == 'cuda' else 'RSS'} {peak:.2f} GiB", flush=True)
        # this round's ratios now (``name=value``, not the final ``name: value``): an interrupted run still tells
        print(
            f"  round {r + 1} ratios: "
            + ", ".join(f"{nm}={results[a][-1] / results[b][-1]:.3f}" for nm, a, b in RATIOS)
        )
    t = {n: statistics.median(r) for n, r in results.items()}
    print("each variant, median over the rounds (ms/step): " + ", ".join(f"{n} {t[n] * 1000:.1f}" for n in t))
    print(f"total {time.perf_counter() - t_start:.0f} s, load average at end {load_average()}")
    for name, num, den in RATIOS:
        per_round = [a / b for a, b in zip(results[num], results[den], strict=True)]
        print(
            f"{name}: {statistics.median(per_round):.3f} (spread {min(per_round):.3f}-{max(per_round):.3f} "
            f"over {len(per_round)} round{'s' if len(per_round) > 1 else ''})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
