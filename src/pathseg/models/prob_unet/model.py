"""Probabilistic U-Net (Kohl et al., NeurIPS 2018): a U-Net whose output depends on a latent z.

A segmentation is ``Fcomb(U-Net features(x), z)``. Two small conv encoders map their input to a
diagonal Gaussian over z: the *prior* p(z|x) sees only the image, the *posterior* q(z|x,y) also
sees one annotator's mask. Training reconstructs that mask with z drawn from the posterior and
pulls the prior towards the posterior (ELBO: cross-entropy + beta * KL(q || p)); at test time each
z drawn from the prior gives one plausible segmentation, so the spread between annotators becomes
a spread between samples.

:class:`AxisAlignedGaussianEncoder` is also the building block CIMD reuses for its ambiguity
networks, so it depends on nothing else in this module.

Conventions: images ``(B, C, H, W)`` in [-1, 1] (pathseg's range); masks ``(B, H, W)`` integer
class indices with ``ignore_index`` for unlabelled pixels; latents ``(B, latent_dim)``.

Precision: CIMD's release keeps its encoders in float64. Here they use the default dtype (float32),
which is enough: an encoder returns ``2 * latent_dim`` numbers per image, and the diagonal-Gaussian
KL built from them is exact to ~1e-7 relative, far below the noise of a stochastic gradient. Under
bf16 autocast the encoders' last 1x1 conv runs in float32, so mu, sigma and the KL stay float32;
``.double()`` still gives float64 for anyone who wants it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from pathseg.errors import ConfigError
from pathseg.losses import cross_entropy
from pathseg.models.registry import register_model
from pathseg.models.unet.model import UNet

__all__ = [
    "AxisAlignedGaussianEncoder",
    "ProbUNet",
    "make_prob_unet_loss",
    "one_hot_mask",
    "prob_unet_loss",
    "sample_latents",
]


def _init_conv(conv: nn.Conv2d) -> None:
    # The Probabilistic U-Net's initialisation: He-normal weights (ReLU follows), biases from a
    # normal with std 1e-3 truncated at two standard deviations.
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.trunc_normal_(conv.bias, std=1e-3, a=-2e-3, b=2e-3)


def one_hot_mask(mask: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """One-hot channels ``(B, num_classes, H, W)`` of an integer mask, all zero at ignored pixels.

    This is how the posterior sees a mask: an unlabelled pixel says nothing about any class.

    Args:
        mask: ``(B, H, W)`` integer class indices in ``0..num_classes-1`` or ``ignore_index``.
        num_classes: Number of classes.
        ignore_index: Value of unlabelled pixels.

    Returns:
        Float tensor of 0s and 1s.

    Raises:
        ValueError: ``mask`` is not 3-D or integer, or holds another value.

    Example:
        >>> one_hot_mask(torch.tensor([[[0, 1, 255]]]), 2)[0, :, 0]
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    if mask.ndim != 3 or mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(
            f"mask must be (B, H, W) integer class indices, got {tuple(mask.shape)} {mask.dtype}"
        )
    labelled = mask != ignore_index
    bad = labelled & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        raise ValueError(
            f"mask holds value {int(mask[bad][0])}, outside classes 0..{num_classes - 1} "
            f"and ignore index {ignore_index}"
        )
    safe = torch.where(labelled, mask, torch.zeros_like(mask)).long()
    channels = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    return channels * labelled.unsqueeze(1)


def sample_latents(dist: Independent, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` reparameterised draws ``(n, B, latent_dim)`` from a diagonal Gaussian.

    ``torch.distributions`` cannot take a generator, so the draw is ``mu + sigma * eps`` with
    ``eps`` from ``generator``; gradients flow to ``mu`` and ``sigma``. The noise is drawn on the
    generator's device and moved, so a CPU generator gives the same z on any device. Draw ``i``
    takes the generator's ``i``-th ``(B, latent_dim)`` block, so with equally seeded generators
    ``n = 5`` begins with the ``n = 3`` draws.

    Args:
        dist: ``Independent(Normal(mu, sigma), 1)`` with batch shape ``(B,)``.
        n: Number of draws per image.
        generator: Source of the noise; the global torch RNG when ``None``.

    Returns:
        Latents of ``mu``'s dtype and device.
    """
    mu, sigma = dist.base_dist.loc, dist.base_dist.scale
    if generator is None:
        eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype)
    else:
        # One call per draw: torch's normal sampler takes a different path for larger tensors, so
        # a single (n, B, L) call would not start with the numbers of an (n', B, L) one.
        blocks = [torch.randn(mu.shape, generator=generator, device=generator.device) for _ in range(n)]
        eps = torch.stack(blocks).to(mu.device, mu.dtype)
    return mu + sigma * eps


class AxisAlignedGaussianEncoder(nn.Module):
    """Conv encoder ``x -> Independent(Normal(mu, exp(log_sigma)), 1)`` over a ``latent_dim`` vector.

    Blocks of ``convs_per_block`` (3x3 conv + ReLU), one block per entry of ``filters``, with a 2x
    average pooling before every block but the first; then the mean over all pixels and a 1x1 conv
    to ``2 * latent_dim`` numbers: the first half is ``mu``, the second ``log_sigma``. Predicting
    the log keeps sigma positive without a constraint. ``Independent(..., 1)`` makes ``log_prob``
    and the KL sum over the latent dimensions, i.e. one number per image.

    Used as the prior (input: the image) and as the posterior (input: the image with one-hot or
    0/1 mask channels concatenated); any input size of at least ``min_size`` pixels works.

    Args:
        in_channels: Input channels.
        latent_dim: Size of z.
        filters: Conv widths, one per block.
        convs_per_block: 3x3 conv + ReLU layers per block.

    Example:
        >>> enc = AxisAlignedGaussianEncoder(3, latent_dim=6, filters=(8, 16))
        >>> dist = enc(torch.randn(2, 3, 32, 32))
        >>> dist.batch_shape, dist.event_shape
        (torch.Size([2]), torch.Size([6]))
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int = 6,
        filters: Sequence[int] = (32, 64, 128, 192),
        convs_per_block: int = 3,
    ) -> None:
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if in_channels < 1 or latent_dim < 1 or convs_per_block < 1:
            raise ConfigError(
                "AxisAlignedGaussianEncoder: in_channels, latent_dim and convs_per_block must be >= 1, "
                f"got {in_channels}, {latent_dim}, {convs_per_block}"
            )
        if not filters or min(filters) < 1:
            raise ConfigError(f"AxisAlignedGaussianEncoder: filters must be positive widths, got {filters}")
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        ch = in_channels
        for i, width in enumerate(filters):
            if i > 0:
                layers.append(nn.AvgPool2d(2))
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(ch, width, 3, padding=1), nn.ReLU(inplace=True)]
                ch = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 2 * latent_dim, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_conv(module)
        #: Smallest height and width the pooling chain accepts.
        self.min_size = 2 ** (len(filters) - 1)

    def forward(self, x: Tensor) -> Independent:
        """The Gaussian over z for each input ``(B, in_channels, H, W)``; batch shape ``(B,)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AxisAlignedGaussianEncoder expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"AxisAlignedGaussianEncoder needs H and W >= {self.min_size}, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        pooled = self.body(x).mean(dim=(2, 3), keepdim=True)
        # The head is tiny; outside autocast it gives mu and sigma (and so the KL) in the module's
        # own precision instead of bf16's three significant digits.
        with torch.autocast(device_type=x.device.type, enabled=False):
            stats = self.head(pooled.to(self.head.weight.dtype)).flatten(1)
        mu, log_sigma = stats.chunk(2, dim=1)
        return Independent(Normal(mu, torch.exp(log_sigma)), 1)


class _Fcomb(nn.Module):
    """Three 1x1 convs on [features, z tiled over the image] -> logits (ReLU between them)."""

    def __init__(self, feature_channels: int, latent_dim: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(feature_channels + latent_dim, feature_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(feature_channels, feature_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(feature_channels, num_classes, 1),
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                _init_conv(module)

    def forward(self, features: Tensor, z: Tensor) -> Tensor:
        h, w = features.shape[-2:]
        tiled = z.to(features.dtype)[:, :, None, None].expand(-1, -1, h, w)
        return self.layers(torch.cat([features, tiled], dim=1))


@register_model("prob_unet")
class ProbUNet(nn.Module):
    """Probabilistic U-Net: pathseg's :class:`~pathseg.models.unet.UNet`, a prior, a posterior, Fcomb.

    The backbone is pathseg's UNet with its 1x1 head replaced by the identity, so it returns its
    last decoder features (``base_channels`` wide, after GroupNorm + SiLU); reusing it gives the
    same size checks and layers as the plain segmenter. The defaults (base 32, mults ``(1, 2, 4, 6)``)
    give the paper's widths 32, 64, 128, 192. Input height and width must be multiples of
    :attr:`size_multiple`.

    * ``forward(image)``: logits of one segmentation, with z the prior's mean. The mean rather
      than a random draw keeps plain inference deterministic (overlapping sliding-window tiles
      agree, and a saved model reproduces its outputs); ``generator=`` or ``z=`` give a random
      or chosen sample, :meth:`sample` many.
    * ``forward(image, mask=mask)`` is :meth:`elbo_terms`: the training pass. Losses call the model
      this way so that DistributedDataParallel and ``torch.compile``, which wrap ``forward``, see it.

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        latent_dim: Size of z.
        base_channels, channel_mults, num_res_blocks, norm_groups: the UNet backbone's.
        encoder_filters, convs_per_block: the prior's and posterior's
            :class:`AxisAlignedGaussianEncoder` (the posterior gets ``num_classes`` more input
            channels: the one-hot mask).

    Example:
        >>> net = ProbUNet(num_classes=2, base_channels=8, channel_mults=(1, 2), encoder_filters=(8, 16))
        >>> image = torch.randn(2, 3, 32, 32)
        >>> net(image).shape, net.sample(image, 4).shape
        (torch.Size([2, 2, 32, 32]), torch.Size([4, 2, 2, 32, 32]))
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        latent_dim: int = 6,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 6),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
        encoder_filters: Sequence[int] = (32, 64, 128, 192),
        convs_per_block: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"ProbUNet: num_classes must be >= 1, got {num_classes}")
        channel_mults = [int(m) for m in channel_mults]
        encoder_filters = [int(f) for f in encoder_filters]
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.config: dict[str, Any] = {
            "name": "prob_unet",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "latent_dim": latent_dim,
            "base_channels": base_channels,
            "channel_mults": channel_mults,
            "num_res_blocks": num_res_blocks,
            "norm_groups": norm_groups,
            "encoder_filters": encoder_filters,
            "convs_per_block": convs_per_block,
        }
        self.backbone = UNet(
            in_channels=in_channels,
            out_channels=num_classes,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            norm_groups=norm_groups,
        )
        self.backbone.head = nn.Identity()  # Fcomb makes the logits from the features and z
        self.prior = AxisAlignedGaussianEncoder(in_channels, latent_dim, encoder_filters, convs_per_block)
        self.posterior = AxisAlignedGaussianEncoder(
            in_channels + num_classes, latent_dim, encoder_filters, convs_per_block
        )
        self.fcomb = _Fcomb(base_channels, latent_dim, num_classes)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (the backbone's constraint)."""
        return self.backbone.size_multiple

    def prior_distribution(self, image: Tensor) -> Independent:
        """p(z | image), batch shape ``(B,)``."""
        return self.prior(image)

    def posterior_distribution(self, image: Tensor, mask: Tensor, ignore_index: int = 255) -> Independent:
        """q(z | image, mask): the posterior sees the image and the one-hot mask (ignored pixels zero)."""
        if mask.shape[-2:] != image.shape[-2:] or mask.shape[0] != image.shape[0]:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)}: expected "
                f"({image.shape[0]}, {image.shape[-2]}, {image.shape[-1]})"
            )
        channels = one_hot_mask(mask, self.num_classes, ignore_index).to(image.dtype)
        return self.posterior(torch.cat([image, channels], dim=1))

    def _check_z(self, z: Tensor, batch: int) -> None:
        if z.shape != (batch, self.latent_dim):
            raise ValueError(f"z must have shape ({batch}, {self.latent_dim}), got {tuple(z.shape)}")

    def forward(
        self,
        image: Tensor,
        z: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
        ignore_index: int = 255,
    ) -> Tensor | dict[str, Tensor]:
        """Logits ``(B, num_classes, H, W)`` of one segmentation, or the training terms.

        Args:
            image: ``(B, in_channels, H, W)``.
            z: ``(B, latent_dim)`` latent to use; by default the prior's mean.
            generator: Draw z from the prior with this generator instead of using its mean.
            mask: Given, return :meth:`elbo_terms` ``(image, mask, ignore_index)`` instead.
            ignore_index: Unlabelled value in ``mask``.

        Returns:
            Logits, or the dict of :meth:`elbo_terms` when ``mask`` is given.
        """
        if mask is not None:
            if z is not None or generator is not None:
                raise ValueError("with mask (the training pass) z comes from the posterior; drop z/generator")
            return self.elbo_terms(image, mask, ignore_index)
        if z is None:
            prior = self.prior(image)
            z = prior.mean if generator is None else sample_latents(prior, 1, generator)[0]
        else:
            self._check_z(z, image.shape[0])
        return self.fcomb(self.backbone(image), z)

    def elbo_terms(self, image: Tensor, mask: Tensor, ignore_index: int = 255) -> dict[str, Tensor]:
        """The training pass: reconstruction logits with z ~ q(z|x,y) and the KL to the prior.

        Args:
            image: ``(B, in_channels, H, W)``.
            mask: ``(B, H, W)`` class indices of one annotator, ``ignore_index`` where unlabelled.
            ignore_index: Unlabelled value in ``mask``.

        Returns:
            ``{"logits": (B, num_classes, H, W), "kl": scalar}``: logits from a reparameterised
            posterior draw (so gradients reach the posterior), and the analytic
            KL(q || p) summed over the latent dimensions, averaged over the batch.
        """
        posterior = self.posterior_distribution(image, mask, ignore_index)
        prior = self.prior(image)
        z = posterior.rsample()
        logits = self.fcomb(self.backbone(image), z)
        kl = kl_divergence(posterior, prior).mean()
        return {"logits": logits, "kl": kl}

    def sample(self, image: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` segmentations per image, z drawn from the prior: logits ``(n, B, num_classes, H, W)``.

        The backbone runs once; only Fcomb runs per sample. The same ``generator`` state gives the
        same samples. Wrap in ``torch.no_grad()`` for inference.

        Args:
            image: ``(B, in_channels, H, W)``.
            n: Samples per image (>= 1).
            generator: Source of the latent noise; the global torch RNG when ``None``.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        features = self.backbone(image)
        latents = sample_latents(self.prior(image), n, generator)
        return torch.stack([self.fcomb(features, z) for z in latents])


def prob_unet_loss(
    model: nn.Module, image: Tensor, mask: Tensor, beta: float = 1.0, ignore_index: int = 255
) -> tuple[Tensor, dict[str, float]]:
    """The negative ELBO: pixel cross-entropy + ``beta`` * KL(q || p).

    The cross-entropy is the mean over labelled pixels (0 when none is labelled); the KL is per
    image, averaged over the batch. The model is called as ``model(image, mask=mask)`` so that a
    DistributedDataParallel wrapper works too.

    Choosing ``beta``: the paper's ELBO *sums* the cross-entropy over pixels, which with the mean
    used here is ``beta = 1 / (labelled pixels per image)`` (1e-3 at 32x32, 1.5e-5 at 256x256).
    ``beta = 1`` weighs the KL that many times more; on a toy two-annotator set the posterior
    then learns to ignore the mask and the samples lose most of their spread.

    Args:
        model: A :class:`ProbUNet` (or a wrapper around one).
        image: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` class indices of one annotator.
        beta: Weight of the KL term.
        ignore_index: Unlabelled value in ``mask``.

    Returns:
        ``(loss, {"ce": float, "kl": float})``, the form of the engine's loss functions.
    """
    terms = model(image, mask=mask, ignore_index=ignore_index)
    ce = cross_entropy(terms["logits"], mask.long(), ignore_index)
    loss = ce + beta * terms["kl"]
    return loss, {"ce": float(ce.detach()), "kl": float(terms["kl"].detach())}


def make_prob_unet_loss(
    beta: float = 1.0, ignore_index: int = 255
) -> Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, float]]]:
    """:func:`prob_unet_loss` as an engine loss function ``(model, batch) -> (loss, logs)``.

    The batch must hold ``"image"`` and ``"mask"`` (one annotator's mask per image).

    Example:
        >>> loss_fn = make_prob_unet_loss(beta=1.0)
        >>> # pathseg.engine.fit(model, dataset, loss_fn, run_dir, config)
    """

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        return prob_unet_loss(model, batch["image"], batch["mask"], beta, ignore_index)

    return loss_fn
