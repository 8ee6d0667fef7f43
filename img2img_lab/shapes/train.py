"""Train the embedded shapes-world model from scratch: a real text-conditioned latent diffusion model.

::

    python -m img2img_lab.shapes.train --out data/models/shapes-world --minutes 60 --seed 0 [--device cuda]

Two phases, both on the same seeded dataset of rendered scenes (:mod:`img2img_lab.shapes.world`):

1. **VAE** (:class:`diffusers.AutoencoderKL`, 64 px -> 16x16x4): reconstruction MSE on random 32x32 crops (the
   VAE is fully convolutional) plus a tiny KL term; the encoder's log-variance bias starts at -6, which trains
   far faster than the default init.
2. **UNet + text encoder** (:class:`diffusers.UNet2DConditionModel` with cross-attention at 8x8 and 4x4, and a
   2-layer :class:`transformers.CLIPTextModel`), trained jointly on the VAE's latents (whitened per channel,
   see :meth:`Trainer.whiten_latents`): epsilon prediction on Stable Diffusion's scaled-linear betas, min-SNR-5
   loss weighting, 10% empty captions (so classifier-free guidance works), and below timestep 200 a 30% chance
   of another image's caption (so at low noise the model trusts the image: low-strength img2img keeps the
   source); an EMA of both (decay 0.999) becomes the saved weights.

The result is saved as a standard ``StableDiffusionImg2ImgPipeline`` folder (fp16 safetensors, DDIM scheduler)
with ``training.json`` (configuration, steps, wall times, throughput, device) and ``train_log.csv`` (the loss
curve). Training is resumable: ``--resume`` continues from ``OUT/.checkpoint`` (written every
``--checkpoint-every`` steps and when interrupted). It runs on CPU and uses CUDA when present; step counts, not
minutes, define the model (``--minutes`` only caps the wall time), so a GPU run and a CPU run train the same
recipe.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from img2img_lab.shapes.tokenizer import MODEL_MAX_LENGTH, write_tokenizer
from img2img_lab.shapes.world import IMAGE_SIZE, make_dataset


@dataclass
class TrainConfig:
    """Every knob of the recipe. Defaults are the committed model's recipe (see its model card)."""

    seed: int = 0
    dataset_size: int = 40_000
    # VAE phase
    vae_steps: int = 2_000
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_crop: int = 32
    vae_kl_weight: float = 1e-7
    vae_channels: tuple = (16, 32, 64)
    # UNet + text encoder phase
    unet_steps: int = 7_500
    batch_size: int = 32
    lr: float = 6e-4
    warmup_steps: int = 200
    unet_channels: tuple = (32, 64, 128)
    unet_layers_per_block: int = 1
    text_hidden: int = 128
    text_layers: int = 2
    empty_caption_rate: float = 0.1
    mismatch_rate: float = 0.3
    mismatch_below_t: int = 200
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 50
    extra: dict = field(default_factory=dict)


SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_components(config: TrainConfig, tokenizer):
    """Fresh (randomly initialised, seeded) VAE, UNet and text encoder for ``config``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
    )
    with torch.no_grad():  # start nearly deterministic: log-variance bias -6
        vae.encoder.conv_out.bias[4:].fill_(-6.0)
    channels = tuple(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2 ** (len(config.vae_channels) - 1),
        in_channels=4, out_channels=4,
        block_out_channels=channels,
        layers_per_block=config.unet_layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=config.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=config.text_hidden * 4,
        num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=config.text_hidden, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    return vae, unet, text_encoder


def whiten_vae_latents(vae, pixels, *, batch_size: int = 256):
    """Give every latent channel mean 0 and spread 1, exactly: the VAE's reconstructions do not change.

    A single ``scaling_factor`` (all a Stable Diffusion pipeline applies) leaves channels unbalanced: a
    channel with a small spread is drowned by noise at a much lower timestep than the others, so whatever
    it encodes (here: colour) is decided by the prompt even at low strength. The per-channel affine map is
    folded into ``quant_conv`` (encoder side: mean and log-variance) and ``post_quant_conv`` (decoder side:
    its inverse). Returns the channel means and spreads measured before whitening.

    >>> import copy, torch
    >>> vae, pixels = copy.deepcopy(pipe.vae), torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> centre, spread = whiten_vae_latents(vae, pixels)
    >>> with torch.no_grad():
    ...     means = vae.encode(pixels).latent_dist.mean
    >>> float(means.mean((0, 2, 3)).abs().max()) < 1e-5, float((means.std((0, 2, 3)) - 1).abs().max()) < 1e-5
    (True, True)
    """
    import torch

    with torch.no_grad():
        means = torch.cat([vae.encode(pixels[start:start + batch_size]).latent_dist.mean
                           for start in range(0, len(pixels), batch_size)])
        centre = means.mean(dim=(0, 2, 3))
        spread = means.std(dim=(0, 2, 3))
        quant, post = vae.quant_conv, vae.post_quant_conv
        channels = centre.numel()
        weight_post = post.weight.clone()
        quant.weight[:channels] /= spread[:, None, None, None]
        quant.bias[:channels] = (quant.bias[:channels] - centre) / spread
        quant.bias[channels:] -= 2 * torch.log(spread)
        post.bias += weight_post[:, :, 0, 0] @ centre
        post.weight *= spread[None, :, None, None]
    return centre, spread


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Stop(Exception):
    pass


class Trainer:
    """Runs the two phases with checkpoints; see the module docstring."""

    def __init__(self, out: Path, config: TrainConfig, *, device: str, minutes: float | None, progress: bool = True):
        import torch
        from transformers import CLIPTokenizer

        self.out, self.config, self.device = Path(out), config, torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.deadline = time.monotonic() + minutes * 60 if minutes else None
        self.progress = progress
        self.checkpoint_dir = self.out / ".checkpoint"
        self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(self.out / "tokenizer"))
        self.vae, self.unet, self.text_encoder = build_components(config, self.tokenizer)
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(self.device)
        import copy

        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.vae_optimizer = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        self.optimizer = torch.optim.AdamW(list(self.unet.parameters()) + list(self.text_encoder.parameters()),
                                           lr=config.lr, weight_decay=1e-2)
        self.state = {"phase": "vae", "vae_step": 0, "unet_step": 0, "scaling_factor": None,
                      "seconds": {"data": 0.0, "vae": 0.0, "latents": 0.0, "unet": 0.0}}
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed + 1)
        self.interrupted = False

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        import torch

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": asdict(self.config), "state": self.state,
            "vae": self.vae.state_dict(), "unet": self.unet.state_dict(), "text": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(), "ema_text": self.ema_text.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }
        temporary = self.checkpoint_dir / "state.pt.tmp"
        torch.save(payload, temporary)
        os.replace(temporary, self.checkpoint_dir / "state.pt")

    def load_checkpoint(self) -> bool:
        import torch

        path = self.checkpoint_dir / "state.pt"
        if not path.is_file():
            return False
        payload = torch.load(path, map_location=self.device, weights_only=False)
        if payload["config"] != asdict(self.config):
            raise SystemExit(f"{path} was written with another configuration; start a new --out or drop --resume.")
        self.state = payload["state"]
        self.vae.load_state_dict(payload["vae"])
        self.unet.load_state_dict(payload["unet"])
        self.text_encoder.load_state_dict(payload["text"])
        self.ema_unet.load_state_dict(payload["ema_unet"])
        self.ema_text.load_state_dict(payload["ema_text"])
        self.vae_optimizer.load_state_dict(payload["vae_optimizer"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.generator.set_state(payload["generator"])
        return True

    def _log(self, phase: str, step: int, loss: float, lr: float) -> None:
        path = self.out / "train_log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(["phase", "step", "loss", "lr", "elapsed_s"])
            writer.writerow([phase, step, f"{loss:.6f}", f"{lr:.3e}", f"{sum(self.state['seconds'].values()):.1f}"])

    def _check_stop(self) -> None:
        if self.interrupted or (self.deadline is not None and time.monotonic() > self.deadline):
            raise _Stop

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        import torch

        started = time.perf_counter()
        images, captions, _ = make_dataset(self.config.dataset_size, seed=self.config.seed,
                                           workers=min(8, os.cpu_count() or 1))
        self.images = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        ids = self.tokenizer(captions, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                             return_tensors="pt").input_ids
        self.caption_ids = ids.to(self.device)
        self.empty_ids = self.tokenizer([""], padding="max_length", max_length=MODEL_MAX_LENGTH,
                                        return_tensors="pt").input_ids.to(self.device)
        self.state["seconds"]["data"] += time.perf_counter() - started

    def _pixels(self, index):
        return self.images[index].float() / 127.5 - 1.0

    # ------------------------------------------------------------------ phase 1
    def train_vae(self) -> None:
        import torch
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(total=config.vae_steps, initial=self.state["vae_step"], desc="vae", disable=not self.progress)
        self.vae.train()
        while self.state["vae_step"] < config.vae_steps:
            self._check_stop()
            started = time.perf_counter()
            step = self.state["vae_step"]
            for group in self.vae_optimizer.param_groups:
                group["lr"] = config.vae_lr * _lr_factor(step, config.vae_steps, 100)
            index = torch.randint(0, len(self.images), (config.vae_batch_size,), generator=self.generator)
            x0, y0 = torch.randint(0, IMAGE_SIZE - config.vae_crop + 1, (2,), generator=self.generator).tolist()
            x0, y0 = x0 - x0 % 4, y0 - y0 % 4
            pixels = self._pixels(index.to(self.device))[:, :, y0:y0 + config.vae_crop, x0:x0 + config.vae_crop]
            posterior = self.vae.encode(pixels).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(
                posterior.mean.shape, generator=self.generator).to(self.device)
            reconstruction = self.vae.decode(latents).sample
            loss = torch.nn.functional.mse_loss(reconstruction, pixels) + config.vae_kl_weight * posterior.kl().mean()
            self.vae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_optimizer.step()
            self.state["vae_step"] += 1
            self.state["seconds"]["vae"] += time.perf_counter() - started
            bar.update(1)
            if step % config.log_every == 0:
                psnr = 10 * math.log10(4.0 / max(torch.nn.functional.mse_loss(reconstruction, pixels).item(), 1e-12))
                bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}dB")
                self._log("vae", step, loss.item(), self.vae_optimizer.param_groups[0]["lr"])
            if self.state["vae_step"] % config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.vae.eval().requires_grad_(False)

    # ------------------------------------------------------------------ latents
    def whiten_latents(self, sample: int = 4096) -> None:
        """Balance the latent channels (see :func:`whiten_vae_latents`) on a sample of the dataset."""
        centre, spread = whiten_vae_latents(self.vae, self._pixels(slice(0, min(sample, len(self.images)))))
        self.state["latent_channel_std_before"] = [round(v, 4) for v in spread.tolist()]

    def encode_dataset(self) -> None:
        import torch

        started = time.perf_counter()
        if self.state.get("latent_channel_std_before") is None:
            self.whiten_latents()
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(self.images), 256):
                posterior = self.vae.encode(self._pixels(slice(start, start + 256))).latent_dist
                means.append(posterior.mean)
                stds.append(posterior.std)
        self.latent_mean, self.latent_std = torch.cat(means), torch.cat(stds)
        self.state["latent_channel_std"] = [round(v, 4) for v in self.latent_mean.std(dim=(0, 2, 3)).tolist()]
        if self.state["scaling_factor"] is None:
            self.state["scaling_factor"] = float(1.0 / self.latent_mean.std().item())
        self.state["seconds"]["latents"] += time.perf_counter() - started

    # ------------------------------------------------------------------ phase 2
    def train_unet(self) -> None:
        import torch
        from diffusers import DDPMScheduler
        from tqdm.auto import tqdm

        config = self.config
        scheduler = DDPMScheduler(**SD_BETAS)
        alphas = scheduler.alphas_cumprod.to(self.device)
        scale = self.state["scaling_factor"]
        self.unet.train()
        self.text_encoder.train()
        parameters = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        ema_targets = list(self.ema_unet.parameters()) + list(self.ema_text.parameters())
        bar = tqdm(total=config.unet_steps, initial=self.state["unet_step"], desc="unet", disable=not self.progress)
        while self.state["unet_step"] < config.unet_steps:
            self._check_stop()
            started = time.perf_counter()
            step = self.state["unet_step"]
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, config.unet_steps, config.warmup_steps)
            index = torch.randint(0, len(self.images), (config.batch_size,), generator=self.generator).to(self.device)
            eps = torch.randn(self.latent_mean[index].shape, generator=self.generator).to(self.device)
            latents = (self.latent_mean[index] + self.latent_std[index] * eps) * scale
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,),
                                      generator=self.generator).to(self.device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            ids = self.caption_ids[index]
            drop = (torch.rand(config.batch_size, generator=self.generator) < config.empty_caption_rate).to(self.device)
            ids = torch.where(drop[:, None], self.empty_ids.expand_as(ids), ids)
            # Low-noise caption mismatch: below mismatch_below_t a share of samples get another image's
            # caption, so at low noise the model learns to trust the image over the prompt (img2img at low
            # strength keeps the source, as large real-world models do).
            other = torch.randint(0, len(self.images), (config.batch_size,), generator=self.generator).to(self.device)
            mismatch = (torch.rand(config.batch_size, generator=self.generator).to(self.device) < config.mismatch_rate) \
                & (timesteps < config.mismatch_below_t) & ~drop
            ids = torch.where(mismatch[:, None], self.caption_ids[other], ids)
            encoded = self.text_encoder(ids)[0]
            prediction = self.unet(noisy, timesteps, encoder_hidden_states=encoded).sample
            snr = alphas[timesteps] / (1 - alphas[timesteps])
            weight = torch.clamp(snr, max=config.min_snr_gamma) / snr
            per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
            loss = (weight * per_sample).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            self.optimizer.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_mul_(ema_targets, decay)
                torch._foreach_add_(ema_targets, [live.detach() for live in parameters], alpha=1 - decay)
            self.state["unet_step"] += 1
            self.state["seconds"]["unet"] += time.perf_counter() - started
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                self._log("unet", step, loss.item(), self.optimizer.param_groups[0]["lr"])
            if self.state["unet_step"] % config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()

    # ------------------------------------------------------------------ export
    def export(self) -> Path:
        import torch
        from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

        self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionImg2ImgPipeline(
            vae=self.vae, text_encoder=self.ema_text, tokenizer=self.tokenizer, unet=self.ema_unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.to("cpu").to(torch.float16)
        pipe.save_pretrained(self.out, safe_serialization=True)
        parameters = {name: sum(p.numel() for p in module.parameters())
                      for name, module in (("unet", self.ema_unet), ("vae", self.vae), ("text_encoder", self.ema_text))}
        seconds = self.state["seconds"]
        report = {
            "config": asdict(self.config),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "vae_steps": self.state["vae_step"], "unet_steps": self.state["unet_step"],
            "scaling_factor": self.state["scaling_factor"],
            "latent_channel_std_before_whitening": self.state.get("latent_channel_std_before"),
            "latent_channel_std": self.state.get("latent_channel_std"),
            "seconds": {key: round(value, 1) for key, value in seconds.items()},
            "total_seconds": round(sum(seconds.values()), 1),
            "vae_steps_per_second": round(self.state["vae_step"] / max(seconds["vae"], 1e-9), 2),
            "unet_steps_per_second": round(self.state["unet_step"] / max(seconds["unet"], 1e-9), 2),
            "parameters": parameters,
            "complete": self.state["unet_step"] >= self.config.unet_steps,
        }
        (self.out / "training.json").write_text(json.dumps(report, indent=2))
        return self.out

    def run(self, *, resume: bool) -> dict:
        if resume and self.load_checkpoint():
            print(f"resuming from {self.checkpoint_dir} at phase {self.state['phase']}, "
                  f"vae step {self.state['vae_step']}, unet step {self.state['unet_step']}")
        elif (self.out / "train_log.csv").exists():
            (self.out / "train_log.csv").unlink()
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "interrupted", True))
        try:
            self.prepare_data()
            if self.state["phase"] == "vae":
                self.train_vae()
                self.state["phase"] = "unet"
                self.save_checkpoint()
            self.vae.eval().requires_grad_(False)
            self.encode_dataset()
            self.train_unet()
            self.state["phase"] = "done"
        except (_Stop, KeyboardInterrupt):
            self.save_checkpoint()
            print(f"stopped at vae step {self.state['vae_step']}, unet step {self.state['unet_step']}; "
                  f"checkpoint in {self.checkpoint_dir} (rerun with --resume to continue)")
            if self.state["phase"] != "unet" or self.state["scaling_factor"] is None:
                return {"complete": False}
        finally:
            signal.signal(signal.SIGTERM, previous)
        report = json.loads(self.export().joinpath("training.json").read_text())
        if report["complete"]:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m img2img_lab.shapes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    parser.add_argument("--out", required=True, help="output folder (a diffusers pipeline folder when done)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap; stops (resumably) when reached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/.checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    for name in ("dataset_size", "vae_steps", "unet_steps", "batch_size", "vae_batch_size", "checkpoint_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "vae_lr", "ema_decay", "mismatch_rate"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--unet-channels", default=",".join(map(str, defaults.unet_channels)))
    parser.add_argument("--unet-layers-per-block", type=int, default=defaults.unet_layers_per_block)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(
        seed=args.seed, dataset_size=args.dataset_size, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
        batch_size=args.batch_size, vae_batch_size=args.vae_batch_size, checkpoint_every=args.checkpoint_every,
        lr=args.lr, vae_lr=args.vae_lr, ema_decay=args.ema_decay, mismatch_rate=args.mismatch_rate,
        unet_channels=tuple(int(c) for c in args.unet_channels.split(",")),
        unet_layers_per_block=args.unet_layers_per_block,
    )
    report = Trainer(Path(args.out), config, device=device, minutes=args.minutes,
                     progress=not args.no_progress).run(resume=args.resume)
    print(json.dumps({key: report.get(key) for key in ("complete", "total_seconds", "vae_steps", "unet_steps",
                                                       "vae_steps_per_second", "unet_steps_per_second")}))
    return 0 if report.get("complete") else 3


if __name__ == "__main__":
    raise SystemExit(main())
