"""Stand-in for the two torchvision functions nerfstudio 1.1.5 uses on a CPU (see ../README.md). Not torchvision."""

__version__ = "0.0+recon-stand-in"
