"""A literal transcription of DIFT's SD featurizer, the test reference of :mod:`proxyclip_pl.sd_features`.

Source: Tsingularity/dift@9421eb2034396c5b66f1aff37f03e540c264e52f, ``src/models/dift_sd.py``:
``MyUNet2DConditionModel.forward`` (the UNet forward truncated after the last requested up block),
``OneStepSDPipeline.__call__`` and ``SDFeaturizer.__init__`` / ``SDFeaturizer.forward``, copied line by line.
The only changes, each marked ``# CHANGED``:

* DIFT's two global-RNG draws (``latent_dist.sample()`` and ``torch.randn_like(latents)``) take a ``generator``
  passed in (the contract's fixed draws: eps, then noise, from one seeded CPU generator);
* ``SDFeaturizer.__init__`` takes the five components instead of a hub id (``from_pretrained(sd_id, ...)``), and
  runs on ``device`` instead of ``"cuda"`` (no xformers: a CUDA-only kernel; attention slicing is kept);
* ``pipe._encode_prompt(...)`` -> ``pipe.encode_prompt(...)[0]``: DIFT was written for diffusers 0.15, whose
  ``_encode_prompt`` returned the prompt embeddings alone without classifier-free guidance; today's
  ``_encode_prompt`` is a shim that concatenates ``(negative, positive)`` and fails when there is no negative;
  ``encode_prompt(...)[0]`` is the same tokenizer + text-encoder code path;
* unused imports (matplotlib, PIL, torchvision) and ``SDFeaturizer4Eval`` are left out.

Everything else (the timestep handling, ``upsample_size`` forwarding, ``_encode_prompt``, the ensemble as a batch
of E copies of the image, the mean) is DIFT's code as written. Images go in as DIFT's demo feeds them:
``(x - 0.5) * 2`` of RGB in [0, 1].
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # CHANGED: diffusers' current path


class MyUNet2DConditionModel(UNet2DConditionModel):
    def forward(
        self,
        sample: torch.FloatTensor,
        timestep: Union[torch.Tensor, float, int],
        up_ft_indices,
        encoder_hidden_states: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None):
        # By default samples have to be AT least a multiple of the overall upsampling factor.
        # The overall upsampling factor is equal to 2 ** (# num of upsampling layears).
        # However, the upsampling interpolation output size can be forced to fit any upsampling size
        # on the fly if necessary.
        default_overall_up_factor = 2**self.num_upsamplers

        # upsample size should be forwarded when sample is not a multiple of `default_overall_up_factor`
        forward_upsample_size = False
        upsample_size = None

        if any(s % default_overall_up_factor != 0 for s in sample.shape[-2:]):
            # logger.info("Forward upsample size to force interpolation output size.")
            forward_upsample_size = True

        # prepare attention_mask
        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)

        # 0. center input if necessary
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            # TODO: this requires sync between CPU and GPU. So try to pass timesteps as tensors if you can
            # This would be a good case for the `match` statement (Python 3.10+)
            is_mps = sample.device.type == "mps"
            if isinstance(timestep, float):
                dtype = torch.float32 if is_mps else torch.float64
            else:
                dtype = torch.int32 if is_mps else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)

        # broadcast to batch dimension in a way that's compatible with ONNX/Core ML
        timesteps = timesteps.expand(sample.shape[0])

        t_emb = self.time_proj(timesteps)

        # timesteps does not contain any weights and will always return f32 tensors
        # but time_embedding might actually be running in fp16. so we need to cast here.
        # there might be better ways to encapsulate this.
        t_emb = t_emb.to(dtype=self.dtype)

        emb = self.time_embedding(t_emb, timestep_cond)

        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when num_class_embeds > 0")

            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)

            class_emb = self.class_embedding(class_labels).to(dtype=self.dtype)
            emb = emb + class_emb

        # 2. pre-process
        sample = self.conv_in(sample)

        # 3. down
        down_block_res_samples = (sample,)
        for downsample_block in self.down_blocks:
            if hasattr(downsample_block, "has_cross_attention") and downsample_block.has_cross_attention:
                sample, res_samples = downsample_block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                sample, res_samples = downsample_block(hidden_states=sample, temb=emb)

            down_block_res_samples += res_samples

        # 4. mid
        if self.mid_block is not None:
            sample = self.mid_block(
                sample,
                emb,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
            )

        # 5. up
        up_ft = {}
        for i, upsample_block in enumerate(self.up_blocks):

            if i > np.max(up_ft_indices):
                break

            is_final_block = i == len(self.up_blocks) - 1

            res_samples = down_block_res_samples[-len(upsample_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(upsample_block.resnets)]

            # if we have not reached the final block and need to forward the
            # upsample size, we do it here
            if not is_final_block and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]

            if hasattr(upsample_block, "has_cross_attention") and upsample_block.has_cross_attention:
                sample = upsample_block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res_samples,
                    encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                    upsample_size=upsample_size,
                    attention_mask=attention_mask,
                )
            else:
                sample = upsample_block(
                    hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples, upsample_size=upsample_size
                )

            if i in up_ft_indices:
                up_ft[i] = sample.detach()

        output = {}
        output['up_ft'] = up_ft
        return output


class OneStepSDPipeline(StableDiffusionPipeline):
    @torch.no_grad()
    def __call__(
        self,
        img_tensor,
        t,
        up_ft_indices,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        prompt_embeds: Optional[torch.FloatTensor] = None,
        callback: Optional[Callable[[int, int, torch.FloatTensor], None]] = None,
        callback_steps: int = 1,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None
    ):

        device = self._execution_device
        latents = self.vae.encode(img_tensor).latent_dist.sample(generator) * self.vae.config.scaling_factor  # CHANGED: generator
        t = torch.tensor(t, dtype=torch.long, device=device)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)  # CHANGED: randn_like(latents)
        latents_noisy = self.scheduler.add_noise(latents, noise, t)
        unet_output = self.unet(latents_noisy,
                               t,
                               up_ft_indices,
                               encoder_hidden_states=prompt_embeds,
                               cross_attention_kwargs=cross_attention_kwargs)
        return unet_output


class SDFeaturizer:
    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, null_prompt='', device="cpu"):  # CHANGED: components
        my_unet = MyUNet2DConditionModel.from_config(unet.config)  # CHANGED: MyUNet2DConditionModel.from_pretrained(sd_id, subfolder="unet")
        my_unet.load_state_dict(unet.state_dict())
        onestep_pipe = OneStepSDPipeline(vae=copy.deepcopy(vae), text_encoder=text_encoder, tokenizer=tokenizer,  # CHANGED: .from_pretrained(sd_id, unet=unet, safety_checker=None)
                                         unet=my_unet, scheduler=scheduler, safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
        onestep_pipe.vae.decoder = None
        onestep_pipe.scheduler = DDIMScheduler.from_config(scheduler.config)  # CHANGED: .from_pretrained(sd_id, subfolder="scheduler")
        onestep_pipe = onestep_pipe.to(device)  # CHANGED: "cuda"
        onestep_pipe.enable_attention_slicing()
        # CHANGED: onestep_pipe.enable_xformers_memory_efficient_attention() (CUDA only)
        null_prompt_embeds = onestep_pipe.encode_prompt(  # CHANGED: _encode_prompt (see the module docstring)
            prompt=null_prompt,
            device=device,  # CHANGED: 'cuda'
            num_images_per_prompt=1,
            do_classifier_free_guidance=False)[0] # [1, 77, dim]

        self.null_prompt_embeds = null_prompt_embeds
        self.null_prompt = null_prompt
        self.pipe = onestep_pipe
        self.device = device  # CHANGED: added

    @torch.no_grad()
    def forward(self,
                img_tensor,
                prompt='',
                t=261,
                up_ft_index=1,
                ensemble_size=8,
                generator=None):  # CHANGED: generator
        '''
        Args:
            img_tensor: should be a single torch tensor in the shape of [1, C, H, W] or [C, H, W]
            prompt: the prompt to use, a string
            t: the time step to use, should be an int in the range of [0, 1000]
            up_ft_index: which upsampling block of the U-Net to extract feature, you can choose [0, 1, 2, 3]
            ensemble_size: the number of repeated images used in the batch to extract features
        Return:
            unet_ft: a torch tensor in the shape of [1, c, h, w]
        '''
        img_tensor = img_tensor.repeat(ensemble_size, 1, 1, 1).to(self.device) # ensem, c, h, w  # CHANGED: .cuda()
        if prompt == self.null_prompt:
            prompt_embeds = self.null_prompt_embeds
        else:
            prompt_embeds = self.pipe.encode_prompt(  # CHANGED: _encode_prompt
                prompt=prompt,
                device=self.device,  # CHANGED: 'cuda'
                num_images_per_prompt=1,
                do_classifier_free_guidance=False)[0] # [1, 77, dim]
        prompt_embeds = prompt_embeds.repeat(ensemble_size, 1, 1)
        unet_ft_all = self.pipe(
            img_tensor=img_tensor,
            t=t,
            up_ft_indices=[up_ft_index],
            prompt_embeds=prompt_embeds,
            generator=generator)  # CHANGED: generator
        unet_ft = unet_ft_all['up_ft'][up_ft_index] # ensem, c, h, w
        unet_ft = unet_ft.mean(0, keepdim=True) # 1,c,h,w
        return unet_ft


# ----------------------------------------------------------------------------------------- the test driver
def dift_window_features(featurizer: SDFeaturizer, window: torch.Tensor, *, seed: int, t: int, up_ft_index: int,
                         ensemble: int, input_size: int | None = None) -> torch.Tensor:
    """[1, 3, h, w] RGB in [0, 1] -> DIFT's [1, C, H, W] with the contract's draws (a CPU generator seeded with
    ``seed``): the window stretched (bilinear) to ``input_size`` when set, then DIFT's ``(x - 0.5) * 2``."""
    x = window
    if input_size is not None:
        x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) * 2
    generator = torch.Generator("cpu").manual_seed(seed)
    return featurizer.forward(x, t=t, up_ft_index=up_ft_index, ensemble_size=ensemble, generator=generator)
