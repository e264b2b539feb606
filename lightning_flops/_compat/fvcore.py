"""fvcore's internals that lightning-flops touches: none (checked against fvcore 0.1.5). The fvcore counter uses the
public ``fvcore.nn.FlopCountAnalysis`` only; a private name it ever needs goes here, version-gated."""

from __future__ import annotations

# (library, where, name, checked against), as in lightning_flops._compat.torch.PRIVATE_APIS
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = ()
