"""Stable Diffusion's UNet as a VFM: DIFT's feature recipe with fixed per-window draws (docs/sd_vfm.md).

DIFT (Tang et al. 2023, "Emergent Correspondence from Image Diffusion"; Tsingularity/dift@9421eb2,
``src/models/dift_sd.py``): the image in [-1, 1] -> a VAE latent sample -> one DDIM noising step at timestep
``t`` -> the UNet with the empty prompt -> the output of ``unet.up_blocks[up_ft_index]`` -> the mean over an
ensemble of ``E`` noise draws. DIFT draws the latent sample and the noise from the global RNG; here both come
from a generator seeded with ``seed`` for every window, so a window's features depend on neither its batch,
nor the process count, nor the device.

This module needs torch only: the diffusers / transformers objects are passed in (:mod:`proxyclip_pl.sd_vfm`
builds them).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: SD-2.x's empty prompt: ``<|startoftext|>``, ``<|endoftext|>``, then its pad token ``!`` (id 0) up to the
#: text encoder's length (SD-1.x pads with ``<|endoftext|>`` instead: its folders bring their tokenizer).
SD2_START, SD2_END, SD2_PAD = 49406, 49407, 0

#: DIFT's semantic-correspondence setting.
DEFAULT_T, DEFAULT_UP_FT_INDEX, DEFAULT_ENSEMBLE = 261, 1, 8


def empty_prompt_ids(length: int) -> torch.Tensor:
    """[1, length] token ids of SD-2.x's empty prompt (what its tokenizer gives for ``""`` padded to ``length``)."""
    ids = torch.full((1, length), SD2_PAD, dtype=torch.long)
    ids[0, :2] = torch.tensor([SD2_START, SD2_END])
    return ids


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(t: Any, up_ft_index: Any, ensemble: Any, input_size: Any, *, num_up_blocks: int | None = None,
                   num_train_timesteps: int | None = None) -> None:
    """``ValueError`` naming the key of a bad setting; the ranges of ``up_ft_index`` and ``t`` are checked
    where the UNet's up blocks / the scheduler's training steps are known."""
    if not _is_int(t) or t < 0 or (num_train_timesteps is not None and t >= num_train_timesteps):
        upper = "num_train_timesteps - 1" if num_train_timesteps is None else num_train_timesteps - 1
        raise ValueError(f"SD VFM setting 't' must be an integer timestep in 0 .. {upper}, got {t!r}")
    if not _is_int(up_ft_index) or up_ft_index < 0 or (num_up_blocks is not None and up_ft_index >= num_up_blocks):
        upper = "len(unet.up_blocks) - 1" if num_up_blocks is None else num_up_blocks - 1
        raise ValueError(f"SD VFM setting 'up_ft_index' must be an up-block index in 0 .. {upper}, got {up_ft_index!r}")
    if not _is_int(ensemble) or ensemble < 1:
        raise ValueError(f"SD VFM setting 'ensemble' must be an integer >= 1 (noise draws per window), got {ensemble!r}")
    if input_size is not None and (not _is_int(input_size) or input_size < 1):
        raise ValueError(f"SD VFM setting 'input_size' must be a positive integer or null (the window as it is), "
                         f"got {input_size!r}")


class _UpBlockOutput(Exception):
    """Carries the output of the chosen up block out of the UNet's forward (the later blocks are not run)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("up block output captured")
        self.output = output


class StableDiffusionVFM(nn.Module):
    """SD's VAE encoder and UNet, read as DIFT reads them: ``forward(windows)`` -> [B, C, H, W] float32.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        vae: a diffusers ``AutoencoderKL`` (only its encoder is used; the decoder may be ``None``).
        scheduler: a diffusers ``DDIMScheduler`` (its ``add_noise``).
        prompt_embeds: [1, L, D] the empty prompt's text-encoder output (kept as a buffer: the text encoder is
            not needed afterwards).
        t, up_ft_index, ensemble: DIFT's timestep, up block and number of noise draws per window.
        input_size: windows are stretched (bilinear) to ``input_size`` squared; ``None``: fed at their size.
        seed: seed of the fixed per-window draws.
        source: where the weights came from (for ``repr``).
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler: Any, prompt_embeds: torch.Tensor, *,
                 t: int = DEFAULT_T, up_ft_index: int = DEFAULT_UP_FT_INDEX, ensemble: int = DEFAULT_ENSEMBLE,
                 input_size: int | None = None, seed: int = 0, source: str = "") -> None:
        super().__init__()
        check_settings(t, up_ft_index, ensemble, input_size, num_up_blocks=len(unet.up_blocks),
                       num_train_timesteps=int(scheduler.config.num_train_timesteps))
        if not _is_int(seed):
            raise ValueError(f"SD VFM seed must be an integer, got {seed!r}")
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.register_buffer("prompt_embeds", prompt_embeds.detach().float())
        self.t, self.up_ft_index, self.ensemble, self.input_size = t, up_ft_index, ensemble, input_size
        self.seed, self.source = seed, source

    def extra_repr(self) -> str:
        return (f"source={self.source!r}, t={self.t}, up_ft_index={self.up_ft_index}, ensemble={self.ensemble}, "
                f"input_size={self.input_size}, seed={self.seed}")

    def draws(self, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed draws of every window: ``eps`` (the latent sample's) then ``noise`` (the noising step's),
        each [E, c, h', w'] float32 on the CPU, from one generator seeded with ``seed``."""
        g = torch.Generator("cpu").manual_seed(self.seed)
        shape = (self.ensemble, *latent_shape)
        eps = torch.randn(shape, generator=g)
        noise = torch.randn(shape, generator=g)
        return eps, noise

    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] RGB in [0, 1] -> [B, C, H, W] float32, each window on its own (its E draws as the batch)."""
        return torch.cat([self.window_features(window[None]) for window in windows])

    @torch.no_grad()
    def window_features(self, window: torch.Tensor) -> torch.Tensor:
        """[1, 3, h, w] -> [1, C, H, W]: the contract's steps 1-6 (docs/sd_vfm.md)."""
        x = window
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        # The image is encoded once: the E copies DIFT encodes would give the same posterior.
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        eps, noise = self.draws(tuple(posterior.mean.shape[1:]))
        mean = posterior.mean
        eps = eps.to(device=mean.device, dtype=mean.dtype)
        latents = (mean + posterior.std * eps) * self.vae.config.scaling_factor
        noise = noise.to(device=latents.device, dtype=latents.dtype)
        t = torch.tensor(self.t, dtype=torch.long, device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t[None])  # [1]: the same coefficients as DIFT's 0-dim t
        prompt = self.prompt_embeds.to(self.unet.dtype).expand(self.ensemble, -1, -1)
        return self.up_block_output(noisy, t, prompt).mean(0, keepdim=True).float()

    def up_block_output(self, sample: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """The output of ``unet.up_blocks[up_ft_index]`` (after its upsampler) in diffusers' own UNet forward,
        which forwards ``upsample_size`` when the latent is not a multiple of ``2 ** num_upsamplers``."""
        def capture(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            raise _UpBlockOutput(output)

        handle = self.unet.up_blocks[self.up_ft_index].register_forward_hook(capture)
        try:
            self.unet(sample, t, encoder_hidden_states=prompt, return_dict=False)
        except _UpBlockOutput as captured:
            return captured.output
        finally:
            handle.remove()
        raise RuntimeError(f"unet.up_blocks[{self.up_ft_index}] was not run")  # pragma: no cover
