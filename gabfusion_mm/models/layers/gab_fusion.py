"""GABFusion: a balanced fusion node for feature-pyramid necks.

A fusion node joins ``K`` branches (a lateral, high-resolution feature and a
resampled, deeper feature in a PAN) by channel concatenation. GABFusion
scales each branch by a softmax weight before the concatenation and
normalizes the result over channels at every pixel, so that the weights set
how much gradient each branch receives while the fused scale stays fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from mmdet.registry import MODELS
from mmengine.logging import print_log
from torch import Tensor, nn

from .channel_affine_fit import ChannelAffineFit
from .channel_layer_norm import ChannelLayerNorm
from .fusion_builder import check_fusion_args


def is_fx_proxy(x: object) -> bool:
    """Return whether ``x`` is a symbolic ``torch.fx`` value."""
    return isinstance(x, torch.fx.Proxy)


@MODELS.register_module()
class GABFusion(nn.Module):
    """Gradient-aware balanced fusion of ``K`` feature branches.

    GABFusion (gradient-aware balanced feature fusion; Wang and Wang,
    arXiv:2511.05898)::

        alpha = softmax(lambda),  lambda in R^K, one scalar per branch
        Y = LN_C(concat(alpha_1 * F_1, ..., alpha_K * F_K))

    ``LN_C`` normalizes each sample at each pixel over the
    ``C = sum(in_channels)`` channels and applies a per-channel affine
    (:class:`ChannelLayerNorm`). Since
    ``dL/dF_i = alpha_i * dL/d(alpha_i * F_i)``, alpha sets the gradient
    energy of each branch, and the LayerNorm keeps the fused scale
    independent of alpha.

    Modes:

    - ``'learnable'``: ``lambda`` is a parameter trained by backpropagation
      (the form of the paper's first version).
    - ``'feedback'``: ``lambda`` is a buffer. After every backward pass,
      :class:`~gabfusion_mm.engine.hooks.GABFusionHook` calls
      :meth:`feedback_update` with the branch gradient norms
      ``G_i = ||dL/dF_i||_2``, which keeps an EMA ``Gbar`` of them and sets
      ``lambda_i -= eta * (log(Gbar_i + eps) - mean_j log(Gbar_j + eps)
      - tau_i)``. A branch whose gradient dominates gets a smaller alpha.
    - ``'concat'``: the plain ``torch.cat`` of the branches, with no
      parameters or buffers, so a GABFusion neck in this mode has the stock
      neck's state dict and outputs.

    Gradient norms: while :attr:`track_grad_norms` is True (always in
    ``'feedback'`` mode; :class:`GABFusionHook` turns it on in the other
    modes), a training forward pass registers a tensor hook that stores
    ``G_i`` during the backward pass. In ``'concat'`` mode ``G_i`` is the norm
    of the gradient of the concatenation's ``i``-th channel slice.
    :meth:`pop_grad_norms` returns and clears the stored value.

    Loading a stock checkpoint: a state dict may contain none of this
    module's keys, as a checkpoint of the stock neck does. Loading then
    keeps the initial values (``lambda = 0``, so ``alpha = 1/K``, and
    LayerNorm weight 1 and bias 0). It removes these keys from the missing
    keys so that strict loading succeeds, logs that it did so and sets
    :attr:`loaded_without_state` to True. With ``norm_init='identity'`` the
    first training forward pass after such a load then fits the LayerNorm
    affine on its batch (:meth:`fit_norm_to_concat`), so that the node
    starts close to the plain concatenation that the checkpoint's
    consumers were trained on.

    Args:
        in_channels (Sequence[int]): Channels of each branch, in the order in
            which they are concatenated. At least two entries.
        mode (str): ``'learnable'``, ``'feedback'`` or ``'concat'``.
            Defaults to ``'learnable'``.
        eta (float): Step size of the feedback update, >= 0. Defaults to
            0.05.
        beta (float): EMA factor of the feedback update, in (0, 1].
            Defaults to 0.1.
        eps (float): Added to the gradient norms before the logarithm, > 0.
            Defaults to 1e-12.
        tau (Sequence[float], optional): Target log-norm offset of each
            branch in the feedback update; None means zeros. Defaults to
            None.
        norm_eps (float): Epsilon of the LayerNorm. Defaults to 1e-5.
        norm_init (str): ``'identity'`` or ``'default'``: whether the first
            training forward pass after loading a state dict without fusion
            parameters fits the LayerNorm affine to reproduce the plain
            concatenation, or keeps weight 1 and bias 0. Defaults to
            ``'identity'``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        mode: str = 'learnable',
        eta: float = 0.05,
        beta: float = 0.1,
        eps: float = 1e-12,
        tau: Sequence[float] | None = None,
        norm_eps: float = 1e-5,
        norm_init: str = 'identity',
    ) -> None:
        super().__init__()
        check_fusion_args(
            in_channels, mode, eta, beta, eps, tau, norm_eps, norm_init
        )
        self.norm_init = norm_init
        self.in_channels = tuple(int(c) for c in in_channels)
        self.num_branches = len(self.in_channels)
        self.mode = mode
        self.eta = float(eta)
        self.beta = float(beta)
        self.eps = float(eps)
        self.track_grad_norms = mode == 'feedback'
        self.loaded_without_state = False
        self._grad_norms: Tensor | None = None
        self._warned_unconsumed = False

        if mode != 'concat':
            logits = torch.zeros(self.num_branches)
            if mode == 'learnable':
                self.branch_logits = nn.Parameter(logits)
            else:
                self.register_buffer('branch_logits', logits)
                self.register_buffer(
                    'grad_norm_ema', torch.zeros(self.num_branches)
                )
                tau_values = torch.zeros(self.num_branches)
                if tau is not None:
                    tau_values = torch.tensor(tau, dtype=torch.float32)
                self.register_buffer('tau', tau_values, persistent=False)
            self.norm = ChannelLayerNorm(sum(self.in_channels), eps=norm_eps)

        self._load_prefix = ''
        self.register_load_state_dict_post_hook(_accept_stock_state)

    @property
    def alpha(self) -> Tensor | None:
        """Branch weights ``softmax(lambda)``, shape ``(K,)``, detached.

        None in ``'concat'`` mode, where the branches are not scaled.
        """
        if self.mode == 'concat':
            return None
        return self.branch_logits.detach().softmax(dim=0)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse the branches.

        Args:
            inputs (Sequence[Tensor]): ``K`` tensors of shape
                ``(N, C_i, H, W)`` with the same ``N``, ``H`` and ``W``.

        Returns:
            Tensor: The fused tensor, shape ``(N, sum(C_i), H, W)``.
        """
        if not is_fx_proxy(inputs[0]):
            self._check_inputs(inputs)
            self._warn_if_feedback_unconsumed()
            if (
                self.training
                and self.loaded_without_state
                and self.norm_init == 'identity'
            ):
                self.fit_norm_to_concat(inputs)

        if self.mode == 'concat':
            fused = torch.cat(tuple(inputs), dim=1)
            self._attach_grad_norm_hook(fused, None)
            return fused

        alpha = self.branch_logits.softmax(dim=0)
        scaled = torch.cat(
            [alpha[i] * feat for i, feat in enumerate(inputs)], dim=1
        )
        self._attach_grad_norm_hook(scaled, alpha)
        return self.norm(scaled)

    def scaled_concat(self, inputs: Sequence[Tensor]) -> Tensor:
        """Return ``concat(alpha_i * F_i)``, the LayerNorm input.

        In ``'concat'`` mode this is the plain concatenation.
        """
        alpha = self.alpha
        if alpha is None:
            return torch.cat(tuple(inputs), dim=1)
        return torch.cat([a * f for a, f in zip(alpha, inputs)], dim=1)

    @torch.no_grad()
    def fit_norm_to_concat(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fit the LayerNorm affine so the output approximates the concat.

        Solves, per channel ``c``, the least-squares problem
        ``concat(F)_c ~ weight_c * u_c + bias_c`` over the batch and its
        pixels, where ``u`` is the normalized ``concat(alpha_i * F_i)``, and
        stores the solution in the LayerNorm. The statistics are summed over
        all processes, so every rank gets the same affine. Clears
        :attr:`loaded_without_state`.

        Args:
            inputs (Sequence[Tensor]): The branches, as in :meth:`forward`.

        Returns:
            Tensor: ``1 - R^2`` of the fit per channel, shape ``(C,)``.
        """
        if self.mode == 'concat':
            raise RuntimeError('GABFusion in "concat" mode has no LayerNorm')
        target = torch.cat(tuple(inputs), dim=1)
        normalized = self.norm.normalize(self.scaled_concat(inputs))

        fit = ChannelAffineFit(target.shape[1], device=target.device)
        fit.update(normalized, target)
        fit.all_reduce()
        result = fit.solve()

        self.norm.weight.copy_(result.scale)
        self.norm.bias.copy_(result.shift)
        self.loaded_without_state = False
        print_log(
            f'GABFusion {self._load_prefix.rstrip(".") or "(root)"}: '
            f'LayerNorm affine fitted to the plain concatenation, mean '
            f'1 - R^2 = {result.residual_ratio.mean().item():.4f}',
            logger='current',
        )
        return result.residual_ratio

    def pop_grad_norms(self) -> Tensor | None:
        """Return and clear the last recorded branch gradient norms.

        Returns:
            Tensor | None: ``G_i = ||dL/dF_i||_2`` of the last backward pass,
            shape ``(K,)``, float32, or None when no backward pass recorded
            them since the last call.
        """
        norms = self._grad_norms
        self._grad_norms = None
        return norms

    @torch.no_grad()
    def feedback_update(self, grad_norms: Tensor) -> Tensor:
        """Update ``lambda`` from branch gradient norms (``'feedback'`` mode).

        The first call sets the EMA to ``grad_norms``; later calls blend
        them in with factor ``beta``.

        Args:
            grad_norms (Tensor): ``G_i``, shape ``(K,)``.

        Returns:
            Tensor: The error ``e``, shape ``(K,)``, by which
            ``lambda -= eta * e`` moved.
        """
        if self.mode != 'feedback':
            raise RuntimeError(
                f'GABFusion.feedback_update needs mode="feedback", but the '
                f'mode is "{self.mode}"'
            )
        grad_norms = grad_norms.to(self.grad_norm_ema)
        first = (self.grad_norm_ema == 0).all()
        blended = torch.lerp(self.grad_norm_ema, grad_norms, self.beta)
        self.grad_norm_ema.copy_(torch.where(first, grad_norms, blended))

        log_norms = torch.log(self.grad_norm_ema + self.eps)
        error = log_norms - log_norms.mean() - self.tau
        self.branch_logits.sub_(self.eta * error)
        return error

    def extra_repr(self) -> str:
        text = f'in_channels={self.in_channels}, mode={self.mode!r}'
        if self.mode == 'feedback':
            text += f', eta={self.eta}, beta={self.beta}, eps={self.eps}'
        return text

    def _check_inputs(self, inputs: Sequence[Tensor]) -> None:
        if len(inputs) != self.num_branches:
            raise ValueError(
                f'GABFusion got {len(inputs)} inputs, expected '
                f'{self.num_branches} (one per in_channels entry '
                f'{self.in_channels})'
            )
        for i, (feat, channels) in enumerate(zip(inputs, self.in_channels)):
            if feat.dim() != 4 or feat.shape[1] != channels:
                raise ValueError(
                    f'GABFusion input {i} has shape {tuple(feat.shape)}, '
                    f'expected (N, {channels}, H, W)'
                )
        sizes = [tuple(feat.shape[-2:]) for feat in inputs]
        if len(set(sizes)) > 1:
            raise ValueError(
                f'GABFusion inputs have different spatial sizes {sizes}; '
                f'the neck must resample its branches to one size'
            )

    def _warn_if_feedback_unconsumed(self) -> None:
        # A training forward that finds the previous norms unread means no
        # hook applies the feedback update, so lambda would never move.
        if (
            self.mode == 'feedback'
            and self.training
            and self._grad_norms is not None
            and not self._warned_unconsumed
        ):
            self._warned_unconsumed = True
            print_log(
                'GABFusion(mode="feedback") recorded gradient norms that '
                'nothing read, so lambda is not updated. Add '
                "dict(type='GABFusionHook') to custom_hooks.",
                logger='current',
                level=logging.WARNING,
            )

    def _attach_grad_norm_hook(self, x: Tensor, alpha: Tensor | None) -> None:
        if is_fx_proxy(x) or not self.track_grad_norms:
            return
        if not (self.training and x.requires_grad):
            return

        scale = None if alpha is None else alpha.detach()

        def record(grad: Tensor) -> None:
            # x is concat(alpha_i * F_i), so dL/dF_i = alpha_i * dL/dx_i.
            parts = grad.detach().split(self.in_channels, dim=1)
            norms = torch.stack(
                [
                    torch.linalg.vector_norm(part, dtype=torch.float32)
                    for part in parts
                ]
            )
            self._grad_norms = norms if scale is None else norms * scale

        x.register_hook(record)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        own_keys = [key for key in state_dict if key.startswith(prefix)]
        self._load_prefix = prefix
        self.loaded_without_state = self.mode != 'concat' and not own_keys
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


def _accept_stock_state(module: GABFusion, incompatible_keys) -> None:
    """Drop this module's keys from the missing keys of a stock state dict."""
    if not module.loaded_without_state:
        return
    prefix = module._load_prefix
    own = [k for k in incompatible_keys.missing_keys if k.startswith(prefix)]
    for key in own:
        incompatible_keys.missing_keys.remove(key)
    if module.norm_init == 'identity':
        norm_text = 'the first training batch fits the LayerNorm affine'
    else:
        norm_text = 'the LayerNorm keeps weight 1 and bias 0'
    print_log(
        f'GABFusion {prefix.rstrip(".") or "(root)"}: the state dict has no '
        f'fusion parameters, so alpha starts at 1/{module.num_branches} and '
        f'{norm_text}',
        logger='current',
    )
