"""One timm model per CNN family: the real code that the zoo benchmark and the zoo tests check.

Each entry is (family, timm model name). Models are built with random weights and 10 classes; the
input is ``zoo_input_shape(name)``: 2 samples at 64x64, or the fixed size a model needs (attention
models with absolute position embeddings).
"""

from __future__ import annotations

ZOO: tuple[tuple[str, str], ...] = (
    ("resnet", "resnet10t"), ("resnet-d", "resnet26d"), ("seresnet", "seresnet18"),
    ("resnext", "resnext26ts"), ("resnetv2", "resnetv2_50"), ("bit", "resnetv2_50x1_bit"),
    ("regnetx", "regnetx_002"), ("regnety", "regnety_002"), ("regnetz", "regnetz_b16"),
    ("efficientnet", "efficientnet_b0"), ("efficientnet-lite", "efficientnet_lite0"),
    ("tf-efficientnet", "tf_efficientnet_b0"), ("efficientnetv2", "efficientnetv2_rw_t"),
    ("tf-efficientnetv2", "tf_efficientnetv2_b0"), ("condconv", "efficientnet_cc_b0_4e"),
    ("mobilenetv1", "mobilenetv1_100"), ("mobilenetv2", "mobilenetv2_035"),
    ("mobilenetv3", "mobilenetv3_small_050"), ("tf-mobilenetv3", "tf_mobilenetv3_small_minimal_100"),
    ("mobilenetv4", "mobilenetv4_conv_small"), ("mnasnet", "mnasnet_small"), ("semnasnet", "semnasnet_050"),
    ("fbnet", "fbnetc_100"), ("fbnetv3", "fbnetv3_b"), ("spnasnet", "spnasnet_100"), ("tinynet", "tinynet_e"),
    ("mixnet", "mixnet_s"), ("tf-mixnet", "tf_mixnet_s"), ("lcnet", "lcnet_050"), ("ghostnet", "ghostnet_050"),
    ("ghostnetv2", "ghostnetv2_100"), ("dla", "dla34"), ("dla-x", "dla60x_c"), ("dpn", "dpn48b"),
    ("densenet", "densenet121"), ("densenetblur", "densenetblur121d"), ("vgg", "vgg11"), ("vgg-bn", "vgg11_bn"),
    ("inception-v3", "inception_v3"), ("inception-v4", "inception_v4"),
    ("inception-resnet-v2", "inception_resnet_v2"), ("xception", "xception41"),
    ("legacy-xception", "legacy_xception"), ("nasnet", "nasnetalarge"), ("pnasnet", "pnasnet5large"),
    ("legacy-senet", "legacy_seresnet18"), ("sknet", "skresnet18"), ("res2net", "res2net50_14w_8s"),
    ("res2next", "res2next50"), ("resnest", "resnest14d"), ("rexnet", "rexnet_100"), ("selecsls", "selecsls42"),
    ("hrnet", "hrnet_w18_small"), ("cspresnet", "cspresnet50"), ("cspdarknet", "cspdarknet53"),
    ("darknet", "darknet17"), ("cs3darknet", "cs3darknet_focus_s"), ("dm-nfnet", "dm_nfnet_f0"),
    ("nfnet", "nfnet_l0"), ("nf-regnet", "nf_regnet_b0"), ("nf-resnet", "nf_resnet26"), ("gernet", "gernet_s"),
    ("repvgg", "repvgg_a0"), ("byobnet-q", "resnet51q"), ("vovnet", "vovnet39a"),
    ("ese-vovnet", "ese_vovnet19b_dw"), ("tresnet", "tresnet_m"), ("hardcorenas", "hardcorenas_a"),
    ("efficientvit-mit", "efficientvit_b0"), ("efficientvit-msra", "efficientvit_m0"), ("fastvit", "fastvit_t8"),
    ("mobileone", "mobileone_s0"), ("repghost", "repghostnet_050"), ("mobilevit", "mobilevit_xxs"),
    ("mobilevitv2", "mobilevitv2_050"), ("convnext", "convnext_atto"), ("convnextv2", "convnextv2_atto"),
    ("edgenext", "edgenext_xx_small"), ("efficientformer", "efficientformer_l1"),
    ("efficientformerv2", "efficientformerv2_s0"), ("levit", "levit_128s"), ("poolformer", "poolformer_s12"),
    ("poolformerv2", "poolformerv2_s12"), ("inception-next", "inception_next_atto"), ("hgnet", "hgnet_tiny"),
    ("hgnetv2", "hgnetv2_b0"), ("rdnet", "rdnet_tiny"), ("starnet", "starnet_s050"),
    ("mambaout", "mambaout_femto"), ("repvit", "repvit_m0_9"), ("tiny-vit", "tiny_vit_5m_224"),
    ("coatnet", "coatnet_nano_rw_224"), ("maxvit", "maxvit_nano_rw_256"), ("gcvit", "gcvit_xxtiny"),
    ("pvt-v2", "pvt_v2_b0"), ("halonet", "halonet26t"), ("lambda", "lambda_resnet26t"),
    ("botnet", "botnet26t_256"), ("gcresnet", "gcresnet33ts"), ("ecaresnet", "ecaresnet26t"),
    ("resnetrs", "resnetrs50"), ("resnetblur", "resnetblur18"), ("visformer", "visformer_tiny"),
    ("convmixer", "convmixer_768_32"), ("resnet-gn", "resnet50_gn"), ("sequencer", "sequencer2d_s"),
    ("ghostnetv3", "ghostnetv3_050"), ("res2net-d", "res2net50d"),
)

FAST_SAMPLE: tuple[str, ...] = (
    "resnet10t", "mobilenetv3_small_050", "tf_mobilenetv3_small_minimal_100", "efficientnet_cc_b0_4e", "fastvit_t8",
    "nf_regnet_b0", "cs3darknet_focus_s", "mobilevit_xxs", "repghostnet_050", "starnet_s050",
)
"""About ten small models of distinct families for every CI run, chosen for the layers that once got
false findings: StdConv/ScaledStdConv, TF 'same' convs, CondConv experts, blocks that store kernel_size,
fused BN+activation, and one family with true redundant biases."""

CONFIRMED: dict[str, tuple[int, str]] = {
    "vgg11_bn": (8, "vgg.py builds nn.Conv2d(in, v, kernel_size=3, padding=1), default bias=True, before each "
                 "BatchNorm2d"),
    "rexnet_100": (13, "rexnet.py SEWithNorm: fc1 = nn.Conv2d(channels, rd_channels, 1) keeps its bias, then bn"),
    "hrnet_w18_small": (4, "hrnet.py downsamp_modules and final_layer: nn.Conv2d(..., bias=True) then BatchNorm2d"),
    "efficientformer_l1": (33, "efficientformer.py Stem4/Downsample convs and Mlp.fc1 = nn.Conv2d(..., 1) with "
                           "bias, each followed by a BatchNorm2d"),
    "efficientformerv2_s0": (75, "efficientformer_v2.py ConvNorm/ConvMlpWithNorm build nn.Conv2d with bias=True "
                             "before BatchNorm2d (norm_act)"),
    "inception_next_atto": (37, "inception_next.py: the stem conv (bias) before BatchNorm2d, and "
                            "InceptionDWConv2d's dwconv_hw/w/h (bias) concatenated into the block's norm"),
    "starnet_s050": (18, "starnet.py ConvBN adds nn.Conv2d(in, out, k, s, p, d, groups) with its default bias "
                     "before BatchNorm2d"),
    "repvit_m0_9": (23, "repvit.py RepVggDw: conv1 = nn.Conv2d(ed, ed, 1, groups=ed) with bias, then "
                    "bn(conv(x) + conv1(x) + x)"),
    "resnest14d": (4, "split_attn.py SplitAttn: fc1 = nn.Conv2d(out_channels, attn_chs, 1) keeps its bias, then bn1; "
                   "the blocks' last BN is zero-initialised, so no gradient reaches it at init"),
    "inception_resnet_v2": (1, "inception_resnet_v2.py: the last Block8 has no ReLU, so conv2d's bias (x*scale + x) "
                            "reaches conv2d_7b, a 1x1 conv without padding (a constant stays a constant), then its BN"),
    "gcresnet33ts": (10, "global_context.py: x + mlp_add(context) adds fc2's bias to every position; conv3_1x1 (1x1, "
                     "no padding) keeps it one constant per channel, and its BatchNorm cancels it"),
    "visformer_tiny": (3, "visformer.py PatchEmbed: proj = nn.Conv2d(..., bias default) then a BatchNorm2d norm"),
}
"""The only findings on the zoo: redundant biases, each read in the model's source (timm 1.0)."""


_SIZE = 64
_LARGER = {"inception_v3": 128, "inception_v4": 128, "inception_resnet_v2": 128}
"""Models whose valid-padded stems shrink a 64x64 map to nothing."""


def zoo_input_shape(name: str) -> tuple[int, int, int, int]:
    """(2, 3, H, W): 64x64 where the model takes any size, else the size it was built for."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    fixed = cfg is not None and (cfg.fixed_input_size or _needs_its_size(name))
    side = cfg.input_size[-1] if fixed and cfg is not None else _LARGER.get(name, _SIZE)
    return (2, 3, side, side)


def _needs_its_size(name: str) -> bool:
    """Models whose attention windows or position tables are sized at construction."""
    return name.split("_")[0] in {"coatnet", "maxvit", "tiny", "levit", "efficientformer", "efficientformerv2",
                                  "gcvit", "botnet26t", "halonet26t", "lambda", "sequencer2d", "efficientvit"}


def build(name: str):  # type: ignore[no-untyped-def]
    """The model with random weights (seeded), 10 classes."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10)
