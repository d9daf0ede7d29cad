"""Block-partitioned training of large scenes (``ns-train-blocks``).

The VastGaussian (Lin et al., "VastGaussian: Vast 3D Gaussians for Large Scene Reconstruction",
CVPR 2024) and CityGaussian (Liu et al., "CityGaussian: Real-time High-quality Large-Scale Scene
Rendering with Gaussians", ECCV 2024) recipe on recon's Gaussian-family methods:

1. :mod:`recon.blocks.partition`: cells on the ground plane, balanced by quantiles, expanded by an
   overlap; cameras and sparse points assigned to the blocks (pure geometry);
2. :mod:`recon.blocks.runner`: each block an ordinary run of the method over its views and points,
   as Ray tasks or in a process pool, retried when it fails, resumable;
3. :mod:`recon.blocks.merge`: each block's Gaussians inside its own cell, concatenated into one
   ``splat`` run folder (and, from ``ns-train-blocks``, one standard 3DGS PLY).

The command itself (options, folders, resume) is :mod:`recon.cli.train_blocks`.
"""

from recon.blocks.partition import BlockPartition, parse_grid, partition_scene

__all__ = ["BlockPartition", "parse_grid", "partition_scene"]
