"""``ns-process-data images|video``: from a folder of photos or a video to a posed dataset.

Stages (each with its own progress bar, timed in :class:`~data.process.cli.ProcessResult`):

1. **inputs** (:mod:`data.process.inputs`): photos are copied to ``images/frame_00001.<ext>`` in
   natural name order, turned upright by their EXIF orientation (recon's loaders and COLMAP read
   raw pixels); a video gives evenly spaced frames, skipping blurry ones.
2. **structure from motion** (:mod:`data.process.sfm`, pycolmap on the CPU): SIFT features,
   exhaustive or sequential matching with geometric verification, incremental mapping with
   bundle adjustment (Schoenberger & Frahm 2016, "Structure-from-Motion Revisited", CVPR).
3. **output** (:mod:`data.process.output`): nerfstudio's layout, which ``ns-train`` reads
   directly: ``transforms.json`` (intrinsics with distortion, OpenGL camera-to-world per frame),
   ``sparse_pc.ply``, ``images_2/_4/_8`` and the COLMAP model in ``colmap/sparse/0``.

Everything is written into a hidden sibling of the output folder, renamed into place only when
complete: a failure or Ctrl-C leaves no partial output folder.
"""
