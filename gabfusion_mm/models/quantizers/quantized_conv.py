"""A convolution that fake-quantizes its weight and its input."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and input activation.

    It keeps the parameters (and their state-dict names) of the float
    convolution it replaces, so a float checkpoint loads into it, and adds
    two submodules: ``weight_fake_quant`` and ``input_fake_quant`` (None
    when the input stays in float). With both fake quantizers disabled, the
    output equals the float convolution exactly.

    With a folded batch norm (see :meth:`fold_bn`), the weight quantizer
    sees ``w * gamma / sigma``, the weight of the deployed convolution, and
    the output is divided back by ``gamma / sigma`` so that the batch norm
    that follows still normalizes it. ``sigma`` comes from the running
    variance; in eval mode (or after :meth:`freeze_bn_stats`) conv, divide
    and batch norm equal the folded convolution with a quantized weight.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_fake_quant: nn.Module | None = None
        self.input_fake_quant: nn.Module | None = None
        self.bn_frozen = False
        # The batch norm is owned by the enclosing ConvModule; holding it
        # outside _modules keeps its state-dict keys where they were.
        object.__setattr__(self, 'folded_bn', None)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        weight_fake_quant: nn.Module | None,
        input_fake_quant: nn.Module | None,
    ) -> QuantConv2d:
        """Build from a float convolution, sharing its parameters.

        Args:
            conv (nn.Conv2d): The float convolution.
            weight_fake_quant (nn.Module, optional): Fake quantizer of the
                weight, shape ``(C_out, C_in / groups, kH, kW)``.
            input_fake_quant (nn.Module, optional): Fake quantizer of the
                input, shape ``(N, C_in, H, W)``.

        Returns:
            QuantConv2d: A module that shares ``weight`` and ``bias``.
        """
        qconv = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device='meta',
        )
        qconv.weight = conv.weight
        qconv.bias = conv.bias
        qconv.training = conv.training
        qconv.weight_fake_quant = weight_fake_quant
        qconv.input_fake_quant = input_fake_quant
        return qconv

    def fold_bn(self, bn: _BatchNorm) -> None:
        """Quantize the weight with ``bn`` folded in (see the class doc).

        Args:
            bn (_BatchNorm): The affine batch norm with running statistics
                that normalizes this convolution's output.
        """
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(
                'QuantConv2d.fold_bn: the batch norm needs affine=True and '
                f'track_running_stats=True, got {bn!r}.'
            )
        object.__setattr__(self, 'folded_bn', bn)

    def freeze_bn_stats(self) -> None:
        """Normalize with the running statistics from now on, as deployed."""
        self.bn_frozen = True

    def bn_scale(self) -> Tensor | None:
        """Per-channel ``gamma / sigma`` of the folded batch norm, or None.

        None also when the weight fake quantizer is disabled: folding only
        changes what the weight quantizer sees, and skipping it keeps the
        output bit-identical to the float convolution.
        """
        bn = self.folded_bn
        fake_quant = self.weight_fake_quant
        if (
            bn is None
            or fake_quant is None
            or not bool(getattr(fake_quant, 'fake_quant_enabled', [1])[0])
        ):
            return None
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def quantized_weight(self) -> Tensor:
        """Weight that the convolution uses, BN folded in when active."""
        weight = self.weight
        bn_scale = self.bn_scale()
        if bn_scale is not None:
            weight = weight * bn_scale.reshape(-1, 1, 1, 1)
        if self.weight_fake_quant is not None:
            weight = self.weight_fake_quant(weight)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        """Convolve fake-quantized ``x`` with the fake-quantized weight.

        Args:
            x (Tensor): Input of shape ``(N, C_in, H, W)``.

        Returns:
            Tensor: Output of shape ``(N, C_out, H_out, W_out)``.
        """
        if self.input_fake_quant is not None:
            x = self.input_fake_quant(x)
        bn = self.folded_bn
        if bn is not None and self.bn_frozen and bn.training:
            # Runs before the enclosing ConvModule applies the batch norm.
            bn.train(False)
        bn_scale = self.bn_scale()
        if bn_scale is None:
            return self._conv_forward(x, self.quantized_weight(), self.bias)

        out = self._conv_forward(x, self.quantized_weight(), None)
        out = out / bn_scale.reshape(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.folded_bn is not None:
            text += ', bn_folded=True'
        return text
