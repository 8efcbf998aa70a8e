"""Baselines of the paper's Table 1, run by this project under one protocol: a convolutional VAE and a
DDPM (1000 steps, Ho et al.'s schedule) whose denoiser is the GCRL model's own ProposalUNet, sampled by
the ancestral sampler and by DDIM.

Kept out of the method's modules (common/, learner/, actors/): the method never imports these. Pure
math lives in `vae` and `diffusion`; `train` is the wall-clock- or update-budgeted trainer, checkpoint
format and command line (`python bench/baselines/train.py --model vae --minutes 30`).
"""
