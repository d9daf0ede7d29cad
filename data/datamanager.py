"""Images in, training batches out.

:class:`ImageDataset` holds the decoded images of one split (uint8, resized once at load) and
their cameras. :class:`RayDataManager` draws random rays over all pixels of the training images
from its own seeded generator, whose state is part of every checkpoint so a resumed run draws
the same batches as an uninterrupted one; its rays are each camera's exact distorted rays.
:class:`ImageDataManager` hands whole images to a pinhole rasterizer, so it sees the data through
:meth:`DataManagerConfig.prepare_data`: distorted cameras undistorted (:mod:`data.undistort`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from data.base import DataparserOutputs
from data.images import load_depth, load_image, load_instance, load_mask, load_normal
from data.instances import InstanceLabels, dataset_instance_labels
from data.undistort import undistort_outputs
from recon.config import InstantiateConfig
from recon.errors import ConfigError, DataError


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 [H, W, C] image to (W, H) with area averaging (box filter) when shrinking."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    mode = Image.Resampling.BOX if size[0] < array.shape[1] else Image.Resampling.BICUBIC
    squeeze = array.ndim == 2
    img = Image.fromarray(array)
    out = np.asarray(img.resize(size, mode))
    return out if not squeeze else out.reshape(size[1], size[0])


def _nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [H, W, ...] to (W, H) by nearest pixel centres: labels and geometric cues are not interpolated."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    rows = ((np.arange(size[1]) + 0.5) * array.shape[0] / size[1]).astype(np.int64)
    cols = ((np.arange(size[0]) + 0.5) * array.shape[1] / size[0]).astype(np.int64)
    return np.ascontiguousarray(array[rows[:, None], cols[None, :]])


class ImageDataset:
    """The images of one split, decoded once.

    images: list of uint8 tensors [H, W, 3|4] (RGBA when the dataset has alpha).
    cameras: their cameras, already scaled to the stored image size.
    background: [3] colour RGBA images are composited onto (None for RGB datasets).
    """

    def __init__(self, outputs: DataparserOutputs, image_scale: float = 1.0, load_masks: bool = True, labels: InstanceLabels | None = None,
                 load_cues: bool = False):
        self.outputs = outputs
        cameras = outputs.cameras.scaled(image_scale) if image_scale != 1.0 else outputs.cameras
        self.cameras = cameras
        self.background = outputs.alpha_color
        self.filenames = outputs.image_filenames
        self.images: list[Tensor] = []
        self.masks: list[Tensor] | None = [] if (load_masks and outputs.mask_filenames) else None
        for i, path in enumerate(outputs.image_filenames):
            size = (int(cameras.width[i]), int(cameras.height[i]))
            raw = load_image(path)
            expect = (int(outputs.cameras.width[i]), int(outputs.cameras.height[i]))
            if (raw.shape[1], raw.shape[0]) != expect:
                raise DataError(
                    f"image is {raw.shape[1]}x{raw.shape[0]} but its camera says {expect[0]}x{expect[1]}", path
                )
            self.images.append(torch.from_numpy(np.array(_resize(raw, size))))
            if self.masks is not None:
                mask = load_mask(outputs.mask_filenames[i]).astype(np.uint8) * 255
                self.masks.append(torch.from_numpy(_resize(mask, size) > 127))
        # instances: contiguous labels [H, W] int64 (data.instances) when ``labels`` is given
        self.instances: list[Tensor] | None = None if labels is None else [
            self._instance(outputs, i, labels, (int(cameras.width[i]), int(cameras.height[i]))) for i in range(len(self.images))
        ]
        # geometric cues (MonoSDF's depth and normal priors, or ground truth), when asked and present
        sizes = [(int(cameras.width[i]), int(cameras.height[i])) for i in range(len(self.images))]
        self.depths: list[Tensor] | None = None
        self.normals: list[Tensor] | None = None
        if load_cues and outputs.depth_filenames:
            self.depths = [self._depth(outputs, i, sizes[i]) for i in range(len(self.images))]
        if load_cues and outputs.normal_filenames:
            self.normals = [self._normal(outputs, i, sizes[i]) for i in range(len(self.images))]
        if self.images and len({img.shape[-1] for img in self.images}) > 1:
            # Mixed RGB/RGBA: promote to RGBA so every pixel composites the same way.
            self.images = [img if img.shape[-1] == 4 else torch.cat([img, torch.full_like(img[..., :1], 255)], -1) for img in self.images]

    @staticmethod
    def _instance(outputs: DataparserOutputs, i: int, labels: InstanceLabels, size: tuple[int, int]) -> Tensor:
        if not outputs.instance_filenames:
            raise DataError("this method needs instance masks, and the dataset has none (transforms.json: instance_file_path per frame)",
                            outputs.image_filenames[i])
        path = Path(outputs.instance_filenames[i])
        ids = load_instance(path)
        ImageDataset._check_size(outputs, i, ids, "instance mask", path)
        return torch.from_numpy(_nearest(labels.remap(ids, path), size))

    @staticmethod
    def _check_size(outputs: DataparserOutputs, i: int, array: np.ndarray, what: str, path: Path) -> None:
        expect = (int(outputs.cameras.width[i]), int(outputs.cameras.height[i]))
        if (array.shape[1], array.shape[0]) != expect:
            raise DataError(f"{what} is {array.shape[1]}x{array.shape[0]} but its image is {expect[0]}x{expect[1]}", path)

    @classmethod
    def _depth(cls, outputs: DataparserOutputs, i: int, size: tuple[int, int]) -> Tensor:
        """Depth cue [H, W] float32: z-depth in normalised units for metric depth; the raw values of a
        relative (monocular) depth, known up to scale and shift; 0 where there is none."""
        path = Path(outputs.depth_filenames[i])
        depth = load_depth(path, outputs.depth_unit_scale_factor)
        cls._check_size(outputs, i, depth, "depth map", path)
        if not outputs.depth_is_relative:
            depth = depth * np.float32(outputs.dataparser_scale)
        return torch.from_numpy(_nearest(depth, size))

    @classmethod
    def _normal(cls, outputs: DataparserOutputs, i: int, size: tuple[int, int]) -> Tensor:
        """Normal cue [H, W, 3]: unit normals in the normalised world frame (0 where there is none).
        ``metadata["normal_frame"]`` says how the files store them: "camera" (MonoSDF / Omnidata,
        the OpenCV camera frame) or "world" (the input poses' frame)."""
        path = Path(outputs.normal_filenames[i])
        normal = torch.from_numpy(load_normal(path))
        cls._check_size(outputs, i, normal.numpy(), "normal map", path)
        frame = outputs.metadata.get("normal_frame", "world")
        if frame == "camera":
            rotation = outputs.cameras.camera_to_worlds[i, :3, :3].float()
        elif frame == "world":
            rotation = outputs.dataparser_transform[:, :3].float()
        else:
            raise DataError(f"normal_frame must be 'camera' or 'world', got {frame!r}", path)
        world = torch.nn.functional.normalize(normal @ rotation.T, dim=-1) * (normal.norm(dim=-1, keepdim=True) > 0.5)
        return torch.from_numpy(_nearest(world.numpy(), size))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_alpha(self) -> bool:
        return bool(self.images) and self.images[0].shape[-1] == 4

    def composite(self, pixels: Tensor, background: Tensor | None = None) -> Tensor:
        """uint8 pixels [..., 3|4] to float RGB [..., 3] in [0, 1], alpha-composited onto ``background``."""
        rgb = pixels[..., :3].float() / 255.0
        if pixels.shape[-1] == 4:
            bg = background if background is not None else self.background
            bg = torch.ones(3) if bg is None else bg
            alpha = pixels[..., 3:].float() / 255.0
            rgb = rgb * alpha + bg.to(rgb) * (1.0 - alpha)
        return rgb

    def image(self, i: int) -> Tensor:
        """Image i as float RGB [H, W, 3], composited onto the dataset background."""
        return self.composite(self.images[i])

    def require_single_size(self, what: str) -> tuple[int, int]:
        """(H, W) shared by every image; a clear error naming an odd one out otherwise."""
        sizes = {tuple(img.shape[:2]) for img in self.images}
        if len(sizes) > 1:
            first = tuple(self.images[0].shape[:2])
            odd = next(i for i, img in enumerate(self.images) if tuple(img.shape[:2]) != first)
            raise DataError(
                f"{what} needs images of one size, but this image is {self.images[odd].shape[1]}x{self.images[odd].shape[0]}"
                f" and {self.filenames[0].name} is {first[1]}x{first[0]}",
                self.filenames[odd],
            )
        return sizes.pop()


@dataclass
class DataManagerConfig(InstantiateConfig):
    """Base of datamanager configs."""

    image_scale: float = 1.0
    """Resize every image by this factor when loading (0.25 turns 400 px into 100 px); intrinsics follow."""
    eval_split: str = "test"
    """Split used for evaluation and eval images."""
    load_instances: bool = False
    """Load the instance masks as contiguous labels (:mod:`data.instances`; the label set from the
    training masks) into both datasets; ray batches then carry ``instance`` [R]. Set by methods
    that learn per-object fields."""
    load_cues: bool = False
    """Load the dataset's depth and normal maps when it has them (MonoSDF's monocular priors, or
    ground truth); ray batches then carry ``depth`` [R] (0: none) and ``normal`` [R, 3] (world
    frame; 0: none). Set by methods with depth/normal losses; a dataset without them is no error."""

    def prepare_data(self, outputs: Any) -> Any:
        """The parsed data as this datamanager presents it to its model (and to evaluation, rendering,
        export and the viewer, which reparse a run's dataset through it); the base keeps it as parsed."""
        return outputs

    def setup(self, **kwargs: Any) -> Any:
        if "outputs" in kwargs:
            kwargs["outputs"] = self.prepare_data(kwargs["outputs"])
        return super().setup(**kwargs)

    def dataset(self, outputs: DataparserOutputs) -> ImageDataset:
        """The images of ``outputs`` (one split) as this datamanager would load them."""
        return ImageDataset(self.prepare_data(outputs), self.image_scale, load_masks=False)


class DataManager:
    """Owns the train and eval datasets and produces training batches."""

    def __init__(self, config: DataManagerConfig, outputs: DataparserOutputs, device: torch.device, seed: int = 0):
        if not isinstance(outputs, DataparserOutputs):
            raise DataError(f"this method trains on posed images, not on {type(outputs).__name__}", outputs.metadata.get("source"))
        self.config = config
        self.device = device
        if not outputs.splits.get("train"):
            raise DataError("the dataset has no training images")
        self.labels = dataset_instance_labels(outputs) if config.load_instances else None
        self.train_dataset = ImageDataset(outputs.split("train"), config.image_scale, labels=self.labels, load_cues=config.load_cues)
        eval_split = config.eval_split if outputs.splits.get(config.eval_split) else "train"
        self.eval_dataset = ImageDataset(outputs.split(eval_split), config.image_scale, labels=self.labels)
        self.generator = torch.Generator().manual_seed(seed)
        self.shard = (0, 1)
        """(rank, world size) of data-parallel training: every rank draws the same global batch from
        :attr:`generator` and keeps its own slice (:meth:`set_shard`); (0, 1) in one process."""

    def set_shard(self, rank: int, world_size: int) -> None:
        """Data-parallel training (:mod:`recon.engine.distributed`): keep slice ``rank`` of
        ``world_size`` equal slices of every global batch. Subclasses check that their batch divides."""
        self.shard = (rank, world_size)

    def next_train(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{len(self.train_dataset)} training images"

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class RayDataManagerConfig(DataManagerConfig):
    """Random rays drawn uniformly over every pixel of every training image."""

    train_num_rays_per_batch: int = 1024
    """Rays per training batch."""


class RayDataManager(DataManager):
    """Batches of R random rays: ``{"rays": RayBundle [R], "rgb": [R, 3], "mask": [R] (if any),
    "instance": [R] int64 (with ``load_instances``), "depth": [R] and "normal": [R, 3] (with
    ``load_cues``, when the dataset has them, or once :meth:`set_cues` has given them; 0 where a
    map has no value)}``."""

    config: RayDataManagerConfig

    def __init__(self, config: RayDataManagerConfig, outputs: DataparserOutputs, device: torch.device, seed: int = 0):
        super().__init__(config, outputs, device, seed)
        ds = self.train_dataset
        self.pixels = torch.cat([img.reshape(-1, img.shape[-1]) for img in ds.images])
        self.masks = torch.cat([m.reshape(-1) for m in ds.masks]) if ds.masks else None
        self.instances = torch.cat([m.reshape(-1) for m in ds.instances]) if ds.instances is not None else None
        self.depths = torch.cat([d.reshape(-1) for d in ds.depths]) if ds.depths is not None else None
        self.normals = torch.cat([n.reshape(-1, 3) for n in ds.normals]) if ds.normals is not None else None
        counts = torch.tensor([img.shape[0] * img.shape[1] for img in ds.images])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.widths = ds.cameras.width.clone()
        self.cameras = ds.cameras.to(device)
        self.cue_version = 0
        """How many times :meth:`set_cues` replaced the cue buffers (0: the dataset's, if any)."""
        self.extra_cues: dict[str, Tensor] = {}
        """Further per-pixel buffers from :meth:`set_cues` (flat, [N, ...]), carried by batches under their names."""

    def set_cues(self, depths: list[Tensor], normals: list[Tensor], extra: dict[str, list[Tensor]] | None = None) -> None:
        """Replace the per-pixel depth and normal buffers that batches carry (a method that makes its
        own cues while it trains, e.g. HelixSurf's multi-view stereo rounds): one z-depth map [H, W]
        (0: none) and one world-frame normal map [H, W, 3] (0: none) per training image, at the
        training images' size. ``extra`` maps more names to per-image maps [H, W, ...]; batches
        carry them under those names (e.g. ``plane_normal``), until the next call replaces them. The
        buffers and the count of replacements (:attr:`cue_version`) are part of :meth:`state_dict`,
        so a resumed run trains on the same cues."""
        ds = self.train_dataset
        maps = {"depth": depths, "normal": normals, **(extra or {})}
        for name, per_image in maps.items():
            if len(per_image) != len(ds):
                raise ValueError(f"set_cues needs one {name} map per training image ({len(ds)}), got {len(per_image)}")
            for img, m in zip(ds.images, per_image):
                if tuple(m.shape[:2]) != tuple(img.shape[:2]):
                    raise ValueError(f"set_cues: a {name} map of {tuple(m.shape[:2])} does not match its image of {tuple(img.shape[:2])}")
        flat = {name: torch.cat([m.reshape(m.shape[0] * m.shape[1], *m.shape[2:]) for m in per_image]).float().cpu()
                for name, per_image in maps.items()}
        if flat["depth"].ndim != 1 or flat["normal"].shape[1:] != (3,):
            raise ValueError("set_cues: depth maps must be [H, W] and normal maps [H, W, 3]")
        self.depths, self.normals = flat.pop("depth"), flat.pop("normal")
        self.extra_cues = flat
        self.cue_version += 1

    def cue_maps(self) -> tuple[list[Tensor], list[Tensor]] | None:
        """The current depth [H, W] and normal [H, W, 3] buffers per training image, or None without cues."""
        if self.depths is None or self.normals is None:
            return None
        sizes = [tuple(img.shape[:2]) for img in self.train_dataset.images]
        counts = (self.offsets[1:] - self.offsets[:-1]).tolist()
        depths = [d.reshape(size) for d, size in zip(self.depths.split(counts), sizes)]
        normals = [n.reshape(*size, 3) for n, size in zip(self.normals.split(counts), sizes)]
        return depths, normals

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = super().state_dict()
        if self.cue_version > 0:
            state.update(cue_version=self.cue_version, cue_depths=self.depths.clone(), cue_normals=self.normals.clone(),
                         cue_extra={k: v.clone() for k, v in self.extra_cues.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "cue_version" in state:
            if state["cue_depths"].shape != (int(self.offsets[-1]),) or state["cue_normals"].shape != (int(self.offsets[-1]), 3):
                raise ValueError("the checkpoint's depth/normal buffers do not match the training images")
            self.depths, self.normals = state["cue_depths"].clone(), state["cue_normals"].clone()
            self.extra_cues = {k: v.clone() for k, v in state.get("cue_extra", {}).items()}
            self.cue_version = int(state["cue_version"])

    def set_shard(self, rank: int, world_size: int) -> None:
        n = self.config.train_num_rays_per_batch
        if n % world_size:
            raise ConfigError(f"--datamanager.train-num-rays-per-batch {n} (the global batch) is not divisible by the {world_size} data-parallel processes")
        super().set_shard(rank, world_size)

    def next_train(self, step: int) -> dict[str, Any]:
        n = self.config.train_num_rays_per_batch
        flat = torch.randint(int(self.offsets[-1]), (n,), generator=self.generator)
        rank, world = self.shard
        if world > 1:  # the same global draw on every rank, each keeps its slice
            flat = flat[rank * n // world : (rank + 1) * n // world]
        cam = torch.searchsorted(self.offsets, flat, right=True) - 1
        local = flat - self.offsets[cam]
        v = torch.div(local, self.widths[cam], rounding_mode="floor")
        u = local - v * self.widths[cam]
        rays = self.cameras.rays_for_pixels(cam.to(self.device), u.to(self.device).float() + 0.5, v.to(self.device).float() + 0.5)
        batch: dict[str, Any] = {"rays": rays, "rgb": self.train_dataset.composite(self.pixels[flat]).to(self.device)}
        if self.pixels.shape[-1] == 4:
            batch["alpha"] = (self.pixels[flat, 3:].float() / 255.0).to(self.device)
        if self.masks is not None:
            batch["mask"] = self.masks[flat].to(self.device)
        if self.instances is not None:
            batch["instance"] = self.instances[flat].to(self.device)
        if self.depths is not None:
            batch["depth"] = self.depths[flat].to(self.device)
        if self.normals is not None:
            batch["normal"] = self.normals[flat].to(self.device)
        for name, values in self.extra_cues.items():
            batch[name] = values[flat].to(self.device)
        return batch


RayDataManagerConfig._target = RayDataManager  # the config is declared first so the class can name it in hints


@dataclass
class ImageDataManagerConfig(DataManagerConfig):
    """Whole training images, one camera per step, in epochs of random order (3DGS's sampling);
    distorted cameras are undistorted to pinhole ones once, at load time (cached on disk)."""

    images_per_batch: int = 1
    """Training images per step (the global batch: data-parallel processes split it, so it must be a
    multiple of their number). Above one per process the model gets a batch of several cameras,
    which only some models take (splat)."""

    def prepare_data(self, outputs: Any) -> Any:
        """Undistorted to pinhole cameras (:func:`data.undistort.undistort_outputs`): the models that
        take whole images rasterize through a pinhole."""
        return undistort_outputs(outputs) if isinstance(outputs, DataparserOutputs) else outputs


class ImageDataManager(DataManager):
    """Batches of one whole image: ``{"camera": Cameras [1], "image": [H, W, 3] composited RGB,
    "alpha": [H, W, 1] (RGBA datasets), "mask": [H, W] (if any), "index": int}``; with
    ``images_per_batch`` B > 1 per process the same entries stacked (``camera`` [B], ``image``
    [B, H, W, 3], ``index`` a list).

    Every training image is used once per epoch, in an order drawn from the datamanager's generator
    (so a resumed run draws the same images as an uninterrupted one). Data-parallel processes draw
    the same B images and each keeps its share (:meth:`set_shard`).
    """

    config: ImageDataManagerConfig

    def __init__(self, config: ImageDataManagerConfig, outputs: DataparserOutputs, device: torch.device, seed: int = 0):
        super().__init__(config, outputs, device, seed)
        self.cameras = self.train_dataset.cameras.to(device)
        self._order: list[int] = []
        if config.images_per_batch < 1:
            raise ConfigError(f"--datamanager.images-per-batch must be at least 1, got {config.images_per_batch}")
        if config.images_per_batch > 1:
            self.train_dataset.require_single_size("a batch of several images (--datamanager.images-per-batch)")

    @property
    def images_per_rank(self) -> int:
        """Images this process renders per step (the global batch over the data-parallel processes)."""
        return self.config.images_per_batch // self.shard[1]

    def set_shard(self, rank: int, world_size: int) -> None:
        b = self.config.images_per_batch
        if b % world_size:
            raise ConfigError(
                f"--datamanager.images-per-batch {b} (the global batch) is not a multiple of the {world_size} data-parallel processes;"
                f" use --datamanager.images-per-batch {world_size} for one image per process"
            )
        super().set_shard(rank, world_size)

    def describe(self) -> str:
        b = self.config.images_per_batch
        return super().describe() + ("" if b == 1 else f", {b} per step")

    def _draw(self) -> int:
        if not self._order:
            self._order = torch.randperm(len(self.train_dataset), generator=self.generator).tolist()
        return self._order.pop()

    def next_train(self, step: int) -> dict[str, Any]:
        rank, world = self.shard
        indices = [self._draw() for _ in range(self.config.images_per_batch)]  # the global batch, in epoch order
        mine = indices[rank * len(indices) // world : (rank + 1) * len(indices) // world]
        return self._image_batch(mine[0]) if len(mine) == 1 else self._stacked_batch(mine)

    def _stacked_batch(self, indices: list[int]) -> dict[str, Any]:
        """Several images: the one-image batch's entries stacked ([B, ...]; ``camera`` [B]), ``index`` a list."""
        parts = [self._image_batch(i) for i in indices]
        batch: dict[str, Any] = {"camera": self.cameras[indices], "index": indices}
        for key in parts[0]:
            if key not in batch:
                batch[key] = torch.stack([p[key] for p in parts])
        return batch

    def _image_batch(self, i: int) -> dict[str, Any]:
        ds = self.train_dataset
        pixels = ds.images[i]
        batch: dict[str, Any] = {"camera": self.cameras[i : i + 1], "image": ds.composite(pixels).to(self.device), "index": i}
        if pixels.shape[-1] == 4:
            batch["alpha"] = (pixels[..., 3:].float() / 255.0).to(self.device)
        if ds.masks is not None:
            batch["mask"] = ds.masks[i].to(self.device)
        return batch

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), "order": torch.tensor(self._order, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        self._order = state["order"].tolist()


ImageDataManagerConfig._target = ImageDataManager
