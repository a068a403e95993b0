"""Attention Distribution Alignment (ADA) loss for feature distillation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mmrazor.registry import MODELS
from torch import Tensor, nn

_VERSIONS = ('v1', 'v2')
_NORMALIZATIONS = ('sum', 'softmax')
_DIVERGENCES = ('kl', 'js')
_KL_DIRECTIONS = ('forward', 'reverse')

# Added to the variance before the square root in the v2 energy, so that the
# gradient of sigma stays finite on constant feature maps (variance 0).
_VAR_EPS = 1e-12


def _centered_square(x: Tensor) -> tuple[Tensor, Tensor]:
    """Return (x - mu_c)^2 and the unbiased variance of each channel.

    Args:
        x (Tensor): Feature map of shape (N, C, H, W).

    Returns:
        tuple[Tensor, Tensor]: The squared deviation, shape (N, C, H, W), and
        the variance sum_hw (x - mu_c)^2 / (H*W - 1), shape (N, C, 1, 1).
        A 1x1 map divides by 1 instead of 0, so its variance is 0.
    """
    num_pixels = x.shape[2] * x.shape[3]
    mean = x.mean(dim=(2, 3), keepdim=True)
    sq_dev = (x - mean).square()
    var = sq_dev.sum(dim=(2, 3), keepdim=True) / max(num_pixels - 1, 1)
    return sq_dev, var


def simam_energy(x: Tensor, lam: float = 1e-4) -> Tensor:
    """Compute the SimAM energy s = (x - mu)^2 / (4 (var + lam)) + 1/2.

    Args:
        x (Tensor): Feature map of shape (N, C, H, W).
        lam (float): Regularizer added to the channel variance.

    Returns:
        Tensor: Energy of shape (N, C, H, W); SimAM's attention is its
        sigmoid.
    """
    sq_dev, var = _centered_square(x)
    return sq_dev / (4 * (var + lam)) + 0.5


def qada_energy(
    x: Tensor,
    quantized: Tensor | None = None,
    step: Tensor | None = None,
    gamma: float = 1.0,
    kappa: float = 1e-2,
) -> Tensor:
    """Compute the Q-ADA energy S = log(1 + z^2) + gamma log(1 + r^2).

    z = |x - mu_c| / (sigma_c + kappa) and r = |x - Q(x)| / (s_c + kappa).
    A quantizer step s_c is a fixed normalizer (detached), so ADA does not
    train it through the denominator. The sigma_c fallback stays a function
    of x, like sigma_c in z. When ``quantized`` is None the distortion term
    is zero, as for a float teacher.

    Args:
        x (Tensor): Feature map of shape (N, C, H, W).
        quantized (Tensor, optional): Q(x), the fake-quantized x, of the
            same shape. Gradients flow through it into x and into the
            quantizer.
        step (Tensor, optional): Quantizer step, one value (per-tensor) or C
            values (per-channel). None uses sigma_c.
        gamma (float): Weight of the distortion term.
        kappa (float): Stabilizer added to sigma_c and s_c.

    Returns:
        Tensor: Energy of shape (N, C, H, W).
    """
    sq_dev, var = _centered_square(x)
    sigma = torch.sqrt(var + _VAR_EPS)
    energy = torch.log1p(sq_dev / (sigma + kappa).square())
    if quantized is None:
        return energy

    if step is None:
        step = sigma
    else:
        step = _broadcast_step(step, x)
    sq_err = (x - quantized).square()
    return energy + gamma * torch.log1p(sq_err / (step + kappa).square())


def _broadcast_step(step: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-tensor or per-channel step to broadcast over x."""
    step = torch.as_tensor(step).detach().to(x).reshape(-1)
    if step.numel() == 1:
        return step.reshape(1, 1, 1, 1)
    if step.numel() == x.shape[1]:
        return step.reshape(1, -1, 1, 1)
    raise ValueError(
        f'ADALoss: the quantizer step has {step.numel()} values, expected '
        f'1 (per-tensor) or {x.shape[1]} (one per channel of the feature '
        'map); point the distortion term at the activation quantizer of '
        'this feature map.'
    )


def divergence(
    log_p: Tensor, log_q: Tensor, kind: str = 'kl', dim: int = -1
) -> Tensor:
    """Compute KL(P || Q) or the Jensen-Shannon divergence from log-probs.

    Args:
        log_p (Tensor): log P, normalized over ``dim``.
        log_q (Tensor): log Q, same shape.
        kind (str): 'kl' for KL(P || Q) or 'js' for
            JS = KL(P || M) / 2 + KL(Q || M) / 2 with M = (P + Q) / 2, which
            is symmetric and lies in [0, log 2].
        dim (int): Dimension the distributions are defined over.

    Returns:
        Tensor: The divergence, with ``dim`` reduced.
    """
    if kind == 'kl':
        return (log_p.exp() * (log_p - log_q)).sum(dim)

    # log M = max + log((1 + exp(-|log P - log Q|)) / 2): symmetric in P
    # and Q, and exactly log P when P = Q, so JS(P, P) is exactly 0.
    gap = (log_p - log_q).abs()
    log_m = torch.maximum(log_p, log_q) + (
        torch.log1p(torch.exp(-gap)) - math.log(2.0)
    )
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim)
    return 0.5 * (kl_pm + kl_qm)


@MODELS.register_module()
class ADALoss(nn.Module):
    """Attention Distribution Alignment loss between student and teacher.

    ADA is the distillation term of "GABFusion: Gradient-Aware Balanced
    Feature Fusion for Quantization-Aware Training of YOLO Detectors"
    (Wang and Wang, arXiv 2511.05898). Each channel of a feature map
    (N, C, H, W) gets an energy per position, the energy is turned into a
    distribution over the H*W positions, and the teacher's and the student's
    distributions are compared with a divergence.

    Energies:

    - ``'v1'`` (arXiv v1): the SimAM energy of "SimAM: A Simple,
      Parameter-Free Attention Module" (Yang et al., ICML 2021),
      s = (x - mu_c)^2 / (4 (var_c + lam)) + 1/2, attention A = sigmoid(s).
    - ``'v2'`` (arXiv v2, Q-ADA): S = log(1 + z^2) + gamma log(1 + r^2) with
      z = |x - mu_c| / (sigma_c + kappa) and r = |x - Q(x)| / (s_c + kappa),
      where Q is the student's activation quantizer and s_c its step
      (sigma_c when the quantizer exposes none). The teacher has no
      quantizer, so its r term is zero; so is the student's when
      ``s_quantized`` is not given.

    Normalizations over the H*W positions of a channel:

    - ``'sum'``: P = A / sum_hw A with A = sigmoid(energy), as in the paper.
      Computed as log_softmax(logsigmoid(energy)), which is the same thing.
    - ``'softmax'``: P = softmax(energy / temperature).

    Since the energy is at least 1/2 (v1) or 0 (v2), A lies in [0.62, 1) or
    [0.5, 1) and the sum-normalized distribution is nearly uniform. The
    softmax default comes from a measurement on the neck outputs of a W4A4
    LSQ YOLOX-tiny student and its float teacher (30 epochs on COCO128),
    32 COCO128 images at 320 px, v1 energy, forward KL, weight 0.01
    (``benchmarks/ada_normalization.py``; numbers in
    ``benchmarks/ada_normalization.md``):

    ============================  ==========  ==============
    quantity                      sum         softmax, T=1
    ============================  ==========  ==============
    loss                          6.1e-5      1.7e-2
    |grad ADA| / |grad det loss|  5.7e-6      8.0e-3
    teacher entropy gap (nats)    0.004       1.25
    teacher mass on top 10%       0.12        0.39
    ADA grad energy on top 10%    0.50        0.60
    ============================  ==========  ==============

    With sum normalization the teacher's distribution is within 0.004 nats
    of uniform and the ADA gradient at the neck outputs is 1e-5 of the
    detection loss's at the paper's weight, so it would need a weight about
    1400 times larger to act at all; the softmax keeps the teacher's
    saliency (39% of the mass on 10% of the positions) and puts more of the
    gradient there.

    Reductions: the divergence between the two distributions of a channel
    sums over its H*W positions. It is then averaged over the C channels
    and the N images, and the distiller averages the pyramid levels. Empty
    batches or maps give a zero loss that is still connected to the student.
    Half-precision inputs are computed in float32, float64 inputs in
    float64.

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        version (str): Energy, ``'v1'`` or ``'v2'``. Defaults to ``'v1'``.
        normalization (str): ``'sum'`` or ``'softmax'``. Defaults to
            ``'softmax'``.
        temperature (float): Softmax temperature; unused by ``'sum'``.
            Defaults to 1.0.
        divergence (str): ``'kl'`` or ``'js'`` (Jensen-Shannon). Defaults
            to ``'kl'``.
        kl_direction (str): ``'forward'`` is KL(P_teacher || P_student), the
            usual distillation direction; ``'reverse'`` is
            KL(P_student || P_teacher). Unused by ``'js'``. Defaults to
            ``'forward'``.
        lam (float): SimAM regularizer of the v1 energy. Defaults to 1e-4.
        gamma (float): Weight of the v2 distortion term. The paper gives no
            value. Defaults to 1.0.
        kappa (float): Stabilizer of the v2 energy's denominators. The paper
            gives no value; 1e-2 is sqrt(lam), the v1 regularizer in the same
            (not squared) units. Defaults to 1e-2.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        version: str = 'v1',
        normalization: str = 'softmax',
        temperature: float = 1.0,
        divergence: str = 'kl',
        kl_direction: str = 'forward',
        lam: float = 1e-4,
        gamma: float = 1.0,
        kappa: float = 1e-2,
    ) -> None:
        super().__init__()
        _check_choice('version', version, _VERSIONS)
        _check_choice('normalization', normalization, _NORMALIZATIONS)
        _check_choice('divergence', divergence, _DIVERGENCES)
        _check_choice('kl_direction', kl_direction, _KL_DIRECTIONS)
        for name, value in (
            ('temperature', temperature),
            ('lam', lam),
            ('kappa', kappa),
        ):
            if not value > 0:
                raise ValueError(
                    f'ADALoss: {name}={value} is invalid, it must be positive.'
                )
        if gamma < 0:
            raise ValueError(
                f'ADALoss: gamma={gamma} is invalid, it must be >= 0.'
            )

        self.loss_weight = loss_weight
        self.version = version
        self.normalization = normalization
        self.temperature = temperature
        self.divergence = divergence
        self.kl_direction = kl_direction
        self.lam = lam
        self.gamma = gamma
        self.kappa = kappa

    def energy(
        self,
        x: Tensor,
        quantized: Tensor | None = None,
        step: Tensor | None = None,
    ) -> Tensor:
        """Compute the per-position energy of a map (N, C, H, W)."""
        if self.version == 'v1':
            return simam_energy(x, self.lam)
        return qada_energy(x, quantized, step, self.gamma, self.kappa)

    def log_distribution(self, energy: Tensor) -> Tensor:
        """Compute log P over the positions of each channel.

        Args:
            energy (Tensor): Energy of shape (N, C, H, W).

        Returns:
            Tensor: log P of shape (N, C, H*W).
        """
        logits = energy.flatten(2)
        if self.normalization == 'sum':
            logits = F.logsigmoid(logits)
        else:
            logits = logits / self.temperature
        return F.log_softmax(logits, dim=-1)

    def forward(
        self,
        s_feature: Tensor,
        t_feature: Tensor,
        s_quantized: Tensor | None = None,
        s_step: Tensor | None = None,
    ) -> Tensor:
        """Compute the weighted ADA loss of one feature level.

        Args:
            s_feature (Tensor): Student feature map (N, C, H, W).
            t_feature (Tensor): Teacher feature map (N, C, H, W); it is
                detached.
            s_quantized (Tensor, optional): The student's activation
                quantizer output Q(s_feature), same shape; v2 only.
            s_step (Tensor, optional): That quantizer's step, 1 or C values;
                v2 only.

        Returns:
            Tensor: Scalar loss, float32 for half-precision inputs, else of
            the input dtype.
        """
        self._check_inputs(s_feature, t_feature, s_quantized)
        dtype = torch.promote_types(s_feature.dtype, torch.float32)
        student = s_feature.to(dtype)
        teacher = t_feature.detach().to(dtype)
        if student.numel() == 0:
            return student.sum() * 0.0

        if s_quantized is not None:
            s_quantized = s_quantized.to(dtype)
        log_p_s = self.log_distribution(
            self.energy(student, s_quantized, s_step)
        )
        log_p_t = self.log_distribution(self.energy(teacher))

        if self.divergence == 'kl' and self.kl_direction == 'forward':
            per_channel = divergence(log_p_t, log_p_s, 'kl')
        elif self.divergence == 'kl':
            per_channel = divergence(log_p_s, log_p_t, 'kl')
        else:
            per_channel = divergence(log_p_s, log_p_t, 'js')
        return self.loss_weight * per_channel.mean()

    @staticmethod
    def _check_inputs(
        s_feature: Tensor, t_feature: Tensor, s_quantized: Tensor | None
    ) -> None:
        if s_feature.dim() != 4:
            raise ValueError(
                'ADALoss: expected feature maps of shape (N, C, H, W), got '
                f'a student feature of shape {tuple(s_feature.shape)}.'
            )
        if s_feature.shape != t_feature.shape:
            raise ValueError(
                'ADALoss: student and teacher feature shapes differ: '
                f'{tuple(s_feature.shape)} vs {tuple(t_feature.shape)}; '
                'distill levels with the same channels and stride.'
            )
        if s_quantized is not None and s_quantized.shape != s_feature.shape:
            raise ValueError(
                'ADALoss: the quantized feature has shape '
                f'{tuple(s_quantized.shape)}, expected '
                f'{tuple(s_feature.shape)} like the student feature; the '
                'quantizer must be the one applied to this feature map.'
            )

    def extra_repr(self) -> str:
        return (
            f'version={self.version}, normalization={self.normalization}, '
            f'temperature={self.temperature}, divergence={self.divergence}, '
            f'kl_direction={self.kl_direction}, '
            f'loss_weight={self.loss_weight}'
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f'ADALoss: {name}={value!r} is invalid, expected one of '
            f'{list(choices)}.'
        )
