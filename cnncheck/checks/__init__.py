"""cnncheck's own rules: a plugin like any other, registered through ``cnncheck_register_rules``."""

from __future__ import annotations

from collections.abc import Iterable

from cnncheck.hookspecs import hookimpl
from cnncheck.rules import Rule


@hookimpl
def cnncheck_register_rules() -> Iterable[Rule]:
    from cnncheck.checks import batchnorm, conv_params, feature_size, mode, pooling, redundant_bias, structure

    return [
        conv_params.RULE,
        pooling.HAS_PARAMETERS,
        pooling.MIXES_CHANNELS,
        redundant_bias.RULE,
        batchnorm.PER_CHANNEL,
        batchnorm.TRAIN_BEHAVIOUR,
        batchnorm.EVAL_BEHAVIOUR,
        mode.RULE,
        feature_size.RULE,
        structure.NOT_USED,
        structure.REUSED,
        structure.NO_GRADIENT,
    ]
