"""Apparent object size at train and test time, and the test resolution that matches it.

The model (METHOD.md section 2, paper section 3). An object of size ``r`` pixels in an
``H x W`` image is seen by the network at

* train time, after RandomResizedCrop picks an ``h_crop x w_crop`` box and resizes it to
  ``K_train x K_train``, with the zoom ``z_train = K_train / sqrt(h_crop * w_crop)`` (the
  isotropic part of the resize; the crop's aspect only stretches, it does not zoom);
* test time, after the shorter side is resized to ``floor(K_test / crop_pct)`` and the
  centre ``K_test x K_test`` is kept (:func:`fixres.data.transforms.eval_geometry`), with
  ``z_test = floor(K_test / crop_pct) / min(H, W)``.

The apparent-size ratio ``r_test / r_train = z_test / z_train`` does not depend on ``r``.
Per draw it is ``floor(K_test / crop_pct) * u / K_train`` with the crop extent
``u = sqrt(h_crop * w_crop) / min(H, W)`` (``u = sqrt(s)`` on a square image, ``s`` the
crop's area fraction), so every matching statistic is a closed-form rescale of a power
mean of ``u``. Three statistics are offered, each setting one power mean of
``z_test / z_train`` to 1:

* ``mean-ratio`` (default, the paper's ``E[r_test / r_train]``): ``E[z_test / z_train] = 1``;
* ``geometric``: ``E[ln(z_test / z_train)] = 0``;
* ``mean-size``: ``E[z_train / z_test] = 1`` (on square images ``E[z_train] = z_test``).

``u`` comes either from the closed forms for ``s ~ U[a, b]`` (square images, every draw
accepted) or from a Monte-Carlo run of torchvision's exact sampler (10 tries of rejection,
then a centre-crop fallback) over the dataset's real image sizes. Either way this is the
*geometric* prediction only: on real data the measured optimum is often higher, because
more test pixels also resolve more detail (METHOD.md section 7); ``fixres sweep`` measures it.
"""
from .geometry import (
                       GEOMETRIC_NOTE,
                       STATISTICS,
                       Prediction,
                       apparent_size_ratios,
                       compare_statistics,
                       crop_extents,
                       predict_test_res,
                       rrc_moments,
                       sample_rrc_sizes,
                       sensitivity,
)
from .plot import plot_apparent_size
from .sizes import SizeScan, image_sizes, parse_size, read_size, scan_sizes

__all__ = [
    "GEOMETRIC_NOTE", "STATISTICS", "Prediction", "SizeScan", "apparent_size_ratios", "compare_statistics",
    "crop_extents", "image_sizes", "parse_size", "plot_apparent_size", "predict_test_res", "read_size",
    "rrc_moments", "sample_rrc_sizes", "scan_sizes", "sensitivity",
]
