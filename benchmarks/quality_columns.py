"""The quality table's settings as data, shared by quality.py / quality_algorithms.py (ours), quality_peer.py
(Neural Compressor) and the reports drawn from their results.

Each column is one weight format setting; ``quant_config`` gives our QuantConfig fields,
``nc`` the matching Neural Compressor weight-only arguments (``dtype``/``bits``/``use_sym``/
``group_size``; ``use_full_range`` where NC has it, so its sym int4 also uses [-8, 7]).
"""
from pathlib import Path

# the search every AWQ row ran before session 14 (AWQ's defaults then, a GPU's since), kept literal so the rows
# keep their meaning whatever a device's default becomes
AWQ_ALL_WINDOWS = dict(awq_parent_batches=32, awq_mlp_token_stride=1, awq_scale_ridge=0.3)
# the row with a CPU's AWQ search since session 14 (quant_core/awq_search_auto.py)
AWQ_CPU_DEFAULT_ROW = "AWQ 8 spread search windows MLP token stride 32 ridge 1.0"

COLUMNS = {
    "int4_g128_sym": dict(label="int4_fullrange g128 sym",
                          quant_config=dict(weight_dtype="int4_fullrange", group_size=128, scheme="sym"),
                          nc=dict(dtype="int", bits=4, use_sym=True, group_size=128)),
    "int4_g128_asym": dict(label="int4_fullrange g128 asym",
                           quant_config=dict(weight_dtype="int4_fullrange", group_size=128, scheme="asym"),
                           nc=dict(dtype="int", bits=4, use_sym=False, group_size=128)),
    "int4_pc_asym": dict(label="int4 per-channel asym",
                         quant_config=dict(weight_dtype="int4_fullrange", group_size=-1, scheme="asym"),
                         nc=dict(dtype="int", bits=4, use_sym=False, group_size=-1)),
    "nf4_g64": dict(label="nf4 g64",
                    quant_config=dict(weight_dtype="nf4", group_size=64, scheme="sym"),
                    nc=dict(dtype="nf4", bits=4, use_sym=True, group_size=64)),
    "fp4_g64": dict(label="fp4_e2m1 g64",
                    quant_config=dict(weight_dtype="fp4_e2m1", group_size=64, scheme="sym"),
                    nc=dict(dtype="fp4_e2m1", bits=4, use_sym=True, group_size=64)),
    "int3_g128_asym": dict(label="int3 g128 asym",
                           quant_config=dict(weight_dtype="int3", group_size=128, scheme="asym"),
                           nc=dict(dtype="int", bits=3, use_sym=False, group_size=128)),
    "int2_g64_asym": dict(label="int2 g64 asym",
                          quant_config=dict(weight_dtype="int2", group_size=64, scheme="asym"),
                          nc=dict(dtype="int", bits=2, use_sym=False, group_size=64)),
    # issue 19's outlier target: int3 per-channel + 1 % unstructured outliers <= 1.25 x fp32
    "int3_pc_asym": dict(label="int3 per-channel asym",
                         quant_config=dict(weight_dtype="int3", group_size=-1, scheme="asym"),
                         nc=dict(dtype="int", bits=3, use_sym=False, group_size=-1)),
}

# Settings measured with RTN only (quality.py's size table): no calibrated algorithm runs them.
RTN_ONLY_COLUMNS = {
    "int8_pc_sym": dict(label="int8 per-channel sym",
                        quant_config=dict(weight_dtype="int8", group_size=-1, scheme="sym")),
    "int4clip_g128_sym": dict(label="int4_clip g128 sym",
                              quant_config=dict(weight_dtype="int4_clip", group_size=128, scheme="sym")),
    "int4_pc_sym": dict(label="int4_fullrange per-channel sym",
                        quant_config=dict(weight_dtype="int4_fullrange", group_size=-1, scheme="sym")),
}
ALL_COLUMNS = {**COLUMNS, **RTN_ONLY_COLUMNS}
# The table says the lm_head stays float, and every stored figure was measured so; since issue 15
# QuantConfig packs the head in int8 by default, so the columns ask for a float head explicitly.
for _column in ALL_COLUMNS.values():
    _column["quant_config"].setdefault("head_weight_dtype", None)

# Rows: algorithm name -> extra QuantConfig fields.
# settings several rows build on
FROM_QUANTEASE = dict(algorithm="signround", signround_start="quantease", signround_start_offset="nearest")
GPTQ_ACT_ORDER_CLIP = dict(algorithm="gptq", act_order=True, mse_clip=True, hessian_shrinkage=0.0)
GPTQ_ACT_ORDER_CLIP_SHRUNK = {**GPTQ_ACT_ORDER_CLIP, "hessian_shrinkage": 0.5}
ROWS = {
    "RTN": dict(algorithm="rtn"),
    # Neural Compressor keeps fp32 scales; ours are stored in fp16 by default: this row compares like with like
    "RTN fp32 scales": dict(algorithm="rtn", scale_dtype="fp32"),
    # issue 15 part 3: the output head (tied to the embedding) packed too, as QuantConfig does by default
    "RTN int8 head": dict(algorithm="rtn", head_weight_dtype="int8"),
    "RTN int4 head": dict(algorithm="rtn", head_weight_dtype="int4_fullrange"),
    "GPTQ": dict(algorithm="gptq", act_order=False),
    # GPTQ's default until session 6 (issue 16): every Hessian but down_proj's unblended with its diagonal
    "GPTQ no Hessian shrinkage": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.0),
    "GPTQ act_order": dict(algorithm="gptq", act_order=True, hessian_shrinkage=0.0),
    # GPTQ as before issue 16's fix: the plain Hessian everywhere (the GPTQ paper's), for the before/after
    "GPTQ plain Hessian": dict(algorithm="gptq", act_order=False, token_weighting=False, mlp_out_shrinkage=0.0,
                               hessian_shrinkage=0.0),
    "AWQ": dict(algorithm="awq"),
    # AWQ's defaults before session 9 (issue 16): no scale ridge
    "AWQ no scale ridge": dict(algorithm="awq", awq_scale_ridge=0.0),
    "TEQ": dict(algorithm="teq"),
    # TEQ's defaults before session 8 (issue 16): no clipping search, no ridge
    "TEQ before session 8": dict(algorithm="teq", teq_clip_search=False, teq_scale_ridge=0.0),
    # GPTQ choosing each group's scale by the clipping search (the reference GPTQ's `mse` quantizer option)
    "GPTQ clip": dict(algorithm="gptq", act_order=False, mse_clip=True, hessian_shrinkage=0.0),
    "GPTQ act_order clip": GPTQ_ACT_ORDER_CLIP,
    # GPTQ's best int3 setting with the default's Hessian shrinkage (issue 16's out-of-domain fix)
    **{f"GPTQ act_order clip Hessian shrinkage {s}": dict(algorithm="gptq", act_order=True, mse_clip=True,
                                                          hessian_shrinkage=s) for s in (0.2, 0.5)},
    # QuantEase (issue 19) at its defaults; GPTQ->QuantEase; 1 % of the weights / input columns kept in fp16
    "QuantEase": dict(algorithm="quantease"),
    "GPTQ->QuantEase": dict(algorithm="gptq_quantease"),
    "QuantEase +1% outliers": dict(algorithm="quantease", outlier_fraction=0.01, outlier_structure="unstructured"),
    "QuantEase +1% column outliers": dict(algorithm="quantease", outlier_fraction=0.01, outlier_structure="columns"),
    # int3 g128 asym <= 34.0 (issue 19): GPTQ's best int3 setting (act_order + clip, 36.41) as QuantEase's start,
    # and QuantEase sweeping in act order (both on the unshrunk Hessian, as GPTQ act_order clip)
    "QuantEase act_order": dict(algorithm="quantease", act_order=True),
    "GPTQ act_order clip->QuantEase": dict(algorithm="gptq_quantease", act_order=True, mse_clip=True),
    # issue 19 part 5, calibration speed: bf16 calibration forwards (2x fp32's GEMM speed on a CPU with bf16
    # units), and AWQ's scale search on its first 2 calibration batches (16 windows) instead of all of them
    "GPTQ bf16 calibration": dict(algorithm="gptq", act_order=False, calibration_dtype="bf16"),
    "GPTQ no Hessian shrinkage bf16 calibration": dict(algorithm="gptq", act_order=False, calibration_dtype="bf16",
                                                       hessian_shrinkage=0.0),
    "AWQ bf16 calibration": dict(algorithm="awq", calibration_dtype="bf16", awq_scale_ridge=0.0),
    "AWQ bf16 calibration 16 search windows": dict(algorithm="awq", calibration_dtype="bf16", awq_parent_batches=2,
                                                   awq_scale_ridge=0.0, awq_parent_batch_choice="first"),
    "AWQ bf16 calibration 8 search windows": dict(algorithm="awq", calibration_dtype="bf16", awq_parent_batches=1,
                                                  awq_scale_ridge=0.0, awq_parent_batch_choice="first"),
    "QuantEase bf16 calibration": dict(algorithm="quantease", calibration_dtype="bf16"),
    # session 9 (issue 19 part 5, AWQ <= 300 s on the 2-core CPU): the scale search on fewer calibration
    # batches of 8 windows, spread over the text (the windows are in text order) or the first ones, or coarse
    # to fine over the ratios (awq_grid_step), every other field at its default (calibration_dtype auto: fp32
    # on a GPU); row "AWQ" is the default search (every ratio on all 16 batches)
    **{f"AWQ {8 * n} spread search windows": dict(algorithm="awq", awq_parent_batches=n, awq_grid_step=1,
                                                   awq_parent_batch_choice="spread") for n in (1, 2, 3)},
    **{f"AWQ 8 spread search windows calibration seed {i}": dict(
        algorithm="awq", awq_parent_batches=1, awq_grid_step=1, awq_parent_batch_choice="spread", calibration_seed=i)
       for i in (1, 2)},
    # the 8-window search (awq_parent_batches=1) fits fewer windows: a larger scale ridge to keep it below RTN
    # out of domain (its int4 g128 sym median of three draws at ridge 0.3: 23.96 against RTN 23.76)
    **{f"AWQ 8 spread search windows ridge {r}{seed}": dict(
        algorithm="awq", awq_parent_batches=1, awq_scale_ridge=r, **({"calibration_seed": i} if i else {}))
       for r in (0.6, 1.0) for i, seed in ((0, ""), (1, " calibration seed 1"), (2, " calibration seed 2"))},
    # session 13 (issue 19 part 5): the MLP's search on every n-th token of all 128 windows
    # (awq_mlp_token_stride) instead of a few whole batches; attention keeps whole batches
    **{f"AWQ {windows}MLP token stride {stride}{seed}": dict(
        algorithm="awq", awq_grid_step=1, awq_mlp_token_stride=stride, **batches,
        **({"calibration_seed": i} if i else {}))
       for stride, windows, batches in (
           (16, "", {}), (16, "16 spread search windows ", dict(awq_parent_batches=2, awq_parent_batch_choice="spread")),
           (32, "8 spread search windows ", dict(awq_parent_batches=1, awq_parent_batch_choice="spread")))
       for i, seed in ((0, ""), (1, " calibration seed 1"), (2, " calibration seed 2"))},
    # the fastest of them (274.5 s on the 2-core CPU) with session 10's larger ridge, which kept the 8-window
    # search below RTN out of domain at int4 g128 sym (its asym median was 0.08 above); a CPU's AWQ default since
    # session 14
    **{f"{AWQ_CPU_DEFAULT_ROW}{seed}": dict(
        algorithm="awq", awq_grid_step=1, awq_mlp_token_stride=32, awq_parent_batches=1,
        awq_parent_batch_choice="spread", awq_scale_ridge=1.0, **({"calibration_seed": i} if i else {}))
       for i, seed in ((0, ""), (1, " calibration seed 1"), (2, " calibration seed 2"))},
    "AWQ 16 first search windows": dict(algorithm="awq", awq_parent_batches=2, awq_grid_step=1,
                                        awq_parent_batch_choice="first"),
    "AWQ coarse-to-fine ratios": dict(algorithm="awq", awq_parent_batches=32, awq_grid_step=4),
    # issue 19's outlier target is stated on "the same calibration as the existing table": the text shipped
    # before issue 16's (8 tokenized WikiText-2 valid articles, kept in benchmarks/data for this row)
    "QuantEase +1% outliers (previous text)": dict(algorithm="quantease", outlier_fraction=0.01,
                                                  outlier_structure="unstructured",
                                                  calibration_dataset="benchmarks/data/calibration_previous.txt"),
    # the spread of one quantization: the same settings on other calibration windows (issue 16)
    **{f"AWQ calibration seed {i}": dict(algorithm="awq", calibration_seed=i) for i in (1, 2)},
    **{f"AWQ no scale ridge calibration seed {i}": dict(algorithm="awq", awq_scale_ridge=0.0, calibration_seed=i)
       for i in (1, 2)},
    "TEQ calibration seed 1": dict(algorithm="teq", calibration_seed=1),
    "TEQ calibration seed 2": dict(algorithm="teq", calibration_seed=2),
    **{f"TEQ before session 8 calibration seed {i}": dict(algorithm="teq", teq_clip_search=False, teq_scale_ridge=0.0, calibration_seed=i)
       for i in (1, 2)},
    # issue 16's options against scales that fit only the calibration text (off by default)
    "TEQ scale ridge 0.3": dict(algorithm="teq", teq_scale_ridge=0.3, teq_clip_search=False),
    "TEQ held-out scale check": dict(algorithm="teq", teq_scale_check="held_out", teq_clip_search=False, teq_scale_ridge=0.0),
    "TEQ scale ridge 0.3 calibration seed 1": dict(algorithm="teq", teq_scale_ridge=0.3, teq_clip_search=False,
                                                   calibration_seed=1),
    "TEQ scale ridge 0.3 calibration seed 2": dict(algorithm="teq", teq_scale_ridge=0.3, teq_clip_search=False,
                                                   calibration_seed=2),
    # GPTQ's spread and ablations at the previous default (session 6): what hessian_shrinkage was chosen against
    **{f"GPTQ no Hessian shrinkage calibration seed {i}": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.0,
                                                               calibration_seed=i) for i in (1, 2, 3)},
    "GPTQ act_order calibration seed 1": dict(algorithm="gptq", act_order=True, hessian_shrinkage=0.0,
                                              calibration_seed=1),
    "GPTQ no Hessian shrinkage damping 0.05": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.0,
                                                   damp_percent=0.05),
    "GPTQ no Hessian shrinkage damping 0.1": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.0,
                                                  damp_percent=0.1),
    "GPTQ no Hessian shrinkage down_proj shrinkage 1": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.0,
                                                            mlp_out_shrinkage=1.0),
    "GPTQ Hessian shrinkage 0.2": dict(algorithm="gptq", act_order=False, hessian_shrinkage=0.2),
    # the spread of GPTQ's current default (hessian_shrinkage 0.5) on other calibration windows
    **{f"GPTQ calibration seed {i}": dict(algorithm="gptq", act_order=False, calibration_seed=i) for i in (1, 2)},
    # session 7 (issue 16): AWQ and TEQ fitted with Hessians blended with their diagonal, as GPTQ's fix;
    # AWQ without its clipping search, to tell whether the clipping or the scales lose out of domain
    **{f"AWQ Hessian shrinkage {s}": dict(algorithm="awq", awq_hessian_shrinkage=s, awq_scale_ridge=0.0) for s in (0.5, 1.0)},
    **{f"TEQ Hessian shrinkage {s}": dict(algorithm="teq", teq_hessian_shrinkage=s, teq_clip_search=False, teq_scale_ridge=0.0)
       for s in (0.5, 1.0)},
    "AWQ no clipping search": dict(algorithm="awq", awq_clip_max_shrink=0.0, awq_scale_ridge=0.0),
    "AWQ activation-only scales": dict(algorithm="awq", awq_duo_scaling=False, awq_scale_ridge=0.0),
    **{f"AWQ activation-only scales calibration seed {i}": dict(algorithm="awq", awq_duo_scaling=False, awq_scale_ridge=0.0,
                                                                calibration_seed=i) for i in (1, 2)},
    "AWQ Hessian shrinkage 0.5 with ridge": dict(algorithm="awq", awq_hessian_shrinkage=0.5),
    "TEQ scale ridge 0.1": dict(algorithm="teq", teq_scale_ridge=0.1, teq_clip_search=False),
    # session 8 (issues 16, 19): TEQ with AWQ's clipping search (with ridge 0.3: row TEQ, the default since); AWQ's scale search on each linear's own
    # output error over all calibration tokens (awq_parent_batches=0: no parent forwards, minutes faster)
    "TEQ clipping search": dict(algorithm="teq", teq_clip_search=True, teq_scale_ridge=0.0),
    "AWQ linear-output search": dict(algorithm="awq", awq_parent_batches=0, awq_scale_ridge=0.0),
    "AWQ activation-only linear-output search": dict(algorithm="awq", awq_parent_batches=0, awq_duo_scaling=False,
                                                      awq_scale_ridge=0.0),
    **{f"AWQ linear-output search calibration seed {i}": dict(algorithm="awq", awq_parent_batches=0, awq_scale_ridge=0.0,
                                                              calibration_seed=i) for i in (1, 2)},
    **{f"AWQ activation-only linear-output search calibration seed {i}": dict(
        algorithm="awq", awq_parent_batches=0, awq_duo_scaling=False, awq_scale_ridge=0.0, calibration_seed=i)
       for i in (1, 2)},
    "AWQ linear-output search with ridge": dict(algorithm="awq", awq_parent_batches=0),
    **{f"AWQ linear-output search with ridge calibration seed {i}": dict(
        algorithm="awq", awq_parent_batches=0, calibration_seed=i) for i in (1, 2)},
    "AWQ activation-only linear-output search Hessian shrinkage 0.5": dict(
        algorithm="awq", awq_parent_batches=0, awq_duo_scaling=False, awq_hessian_shrinkage=0.5, awq_scale_ridge=0.0),
    # SignRound (issue 19): learned rounding at its defaults (200 steps, 8 windows a step, trained towards the
    # float model's hidden states as AutoRound does: the default since session 9); its session-8 default,
    # trained towards the float block on the quantized inputs; and longer runs (AutoRound's "best" recipe: 1000)
    "SignRound": dict(algorithm="signround"),
    "SignRound float-block target": dict(algorithm="signround", signround_target="float_block"),
    "SignRound 400 steps": dict(algorithm="signround", signround_steps=400),
    "SignRound 1000 steps": dict(algorithm="signround", signround_steps=1000),
    # each token's error weighed as the next RMSNorm scales it (the attention sink no longer decides the fit)
    "SignRound token-weighted": dict(algorithm="signround", signround_token_weighting=True),
    # other calibration draws: how far one draw's luck moves SignRound (against AutoRound's int4 g128 sym cell)
    **{f"SignRound calibration seed {i}": dict(algorithm="signround", calibration_seed=i) for i in (1, 2)},
    # learned rounding started from a layer solver's codes and ranges instead of RTN's (issue 19, session 10):
    # each weight at the centre of its solver code's rounding interval (the GPTQ start without
    # hessian_shrinkage, as the best int3 GPTQ rows) ...
    "SignRound from GPTQ centre": dict(algorithm="signround", signround_start="gptq", signround_start_offset="centre"),
    "SignRound from QuantEase centre": dict(algorithm="signround", signround_start="quantease",
                                            signround_start_offset="centre"),
    # ... or at the interval's point nearest W / s (lower block errors on SmolLM2's first blocks; also with
    # GPTQ's clipping search, as "GPTQ clip")
    "SignRound from GPTQ nearest": dict(algorithm="signround", signround_start="gptq", signround_start_offset="nearest"),
    "SignRound from GPTQ clip nearest": dict(algorithm="signround", signround_start="gptq", mse_clip=True,
                                             signround_start_offset="nearest"),
    "SignRound from QuantEase nearest": FROM_QUANTEASE,
    # session 11 (issue 19: int3 g128 asym 34.63 against <= 34.0; AutoRound ahead in domain at int4): the
    # QuantEase start trained longer, on larger mini-batches, token-weighted, or with other step sizes
    # (lr defaults to 1 / steps: 0.005 at 200 steps); and RTN-started SignRound on larger mini-batches
    **{f"SignRound from QuantEase nearest {name}": {**FROM_QUANTEASE, **fields}
       for name, fields in (("400 steps", dict(signround_steps=400)), ("1000 steps", dict(signround_steps=1000)),
                            ("16 windows a step", dict(signround_batch_windows=16, calibration_batch_size=16)),
                            ("token-weighted", dict(signround_token_weighting=True)),
                            ("lr 0.01", dict(signround_lr=0.01)), ("lr 0.0025", dict(signround_lr=0.0025)))},
    "SignRound 16 windows a step": dict(algorithm="signround", signround_batch_windows=16, calibration_batch_size=16),
    # issue 19, session 11: the scales then trained end to end (EfficientQAT's E2E-QP: its 128 steps, about its
    # 1e-5 on raw step sizes as the default 1e-3 on log-scales; 8 windows a step: 8 epochs of 128 windows),
    # towards the float model's next-token distributions; "CE": on the text's own next tokens instead
    **{f"{row} + scale tuning": {**settings, "scale_tuning_steps": 128} for row, settings in (
        ("SignRound from QuantEase nearest", FROM_QUANTEASE), ("SignRound", dict(algorithm="signround")),
        ("GPTQ act_order clip", GPTQ_ACT_ORDER_CLIP),
        ("RTN", dict(algorithm="rtn")))},
    "SignRound from QuantEase nearest + scale tuning 512 steps": {**FROM_QUANTEASE, "scale_tuning_steps": 512},
    "RTN + scale tuning CE": dict(algorithm="rtn", scale_tuning_steps=128, scale_tuning_objective="ce"),
    # other calibration draws of the best tuned rows, and the outlier row tuned (issue 19's int3 per-channel bar)
    **{f"{row} calibration seed {i}": {**ROW, "calibration_seed": i} for i in (1, 2) for row, ROW in (
        ("SignRound from QuantEase nearest + scale tuning", {**FROM_QUANTEASE, "scale_tuning_steps": 128}),
        ("SignRound + scale tuning", dict(algorithm="signround", scale_tuning_steps=128)))},
    "QuantEase +1% outliers + scale tuning": dict(algorithm="quantease", outlier_fraction=0.01,
                                                  outlier_structure="unstructured", scale_tuning_steps=128),
    # what a 2-core CPU can afford (128 steps cost ~70 min there): 16 steps at a larger rate (Adam moves a log-scale
    # about lr a step: 16 x 0.005 against 128 x 0.001), after RTN and after GPTQ's default
    "RTN + scale tuning 16 steps": dict(algorithm="rtn", scale_tuning_steps=16, scale_tuning_lr=0.005),
    "GPTQ + scale tuning 16 steps": dict(algorithm="gptq", scale_tuning_steps=16, scale_tuning_lr=0.005),
    # session 12 (issue 19 part 6, best by default): GPTQ's best int3 setting kept the default's Hessian blend and
    # beat the default in both columns measured (28.07 / 21.65 and 39.71 / 34.10 against 28.29 / 21.59 and 50.23 /
    # 44.45): its other calibration draws, and scale tuning after it, before it may become GPTQ's default
    **{f"GPTQ act_order clip Hessian shrinkage 0.5 calibration seed {i}": {**GPTQ_ACT_ORDER_CLIP_SHRUNK,
                                                                          "calibration_seed": i} for i in (1, 2)},
    "GPTQ act_order clip Hessian shrinkage 0.5 + scale tuning": {**GPTQ_ACT_ORDER_CLIP_SHRUNK, "scale_tuning_steps": 128},
    # session 15: AutoRound's best recipe (1000 iterations on 512 windows) reached 33.67 / 25.93 at int3 g128 asym,
    # below our best out of domain (SignRound + scale tuning, 26.09): the token-weighted fit (each token's error
    # as the next RMSNorm weighs it; the lowest untuned legal-ood figures), tuned; and longer tuning
    **{f"{row} + scale tuning": {**settings, "scale_tuning_steps": 128} for row, settings in (
        ("SignRound token-weighted", dict(algorithm="signround", signround_token_weighting=True)),
        ("SignRound from QuantEase nearest token-weighted", {**FROM_QUANTEASE, "signround_token_weighting": True}))},
    "SignRound + scale tuning 512 steps": dict(algorithm="signround", scale_tuning_steps=512),
    # what "auto" (the default since session 12) runs on a GPU: each algorithm's defaults, then 128 steps
    **{f"{row} + scale tuning": dict(algorithm=algorithm, scale_tuning_steps=128) for row, algorithm in (
        ("GPTQ", "gptq"), ("AWQ", "awq"), ("TEQ", "teq"), ("QuantEase", "quantease"),
        ("GPTQ->QuantEase", "gptq_quantease"))},
}
# scale_tuning_steps defaults to None ("auto": 128 steps where calibration runs on a GPU): every row runs what its
# name says, so a row without "scale tuning" in its name runs none, on any device
ROWS = {name: {"scale_tuning_steps": 0, **fields} for name, fields in ROWS.items()}
# likewise AWQ's scale search, decided by the device since session 14 (quant_core/awq_search_auto.py): every AWQ
# row searches as on a GPU (all windows, ridge 0.3; what its cells measured) unless its name says otherwise; the
# CPU's default is AWQ_CPU_DEFAULT_ROW
ROWS = {name: {**AWQ_ALL_WINDOWS, **fields} if fields["algorithm"] == "awq" else fields for name, fields in ROWS.items()}
# likewise GPTQ's act_order and mse_clip, on by default at 3 bits and below since session 12: off unless named
ROWS = {name: {"act_order": False, "mse_clip": False, **fields} if fields["algorithm"] == "gptq" else fields
        for name, fields in ROWS.items()}
QUANTEASE_ROWS = ("QuantEase", "GPTQ->QuantEase")
# The SignRound cells to measure: its rows on the integer columns where the peers' AutoRound cell is the bar
SIGNROUND_ROWS = tuple(row for row in ROWS if row.startswith("SignRound"))
SIGNROUND_COLUMNS = ("int4_g128_sym", "int4_g128_asym", "int3_g128_asym")

EVAL_FILE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-test.txt")
SEQLEN = 512
WINDOWS = 32
N_SAMPLES = 128  # calibration windows of the table; cells are keyed "row:column:n_samples"
STORE = "quality"  # benchmarks/results/quality.json: every perplexity cell of ours, sizes and timing


def cell_key(row: str, column: str, n_samples: int = N_SAMPLES) -> str:
    return f"{row}:{column}:{n_samples}"

# Double quantization (benchmarks/quality_double_quant.py): each setting with RTN, without and with double_quant.
DOUBLE_QUANT_COLUMNS = {
    "int4_g64_sym": dict(label="int4_fullrange g64 sym",
                         quant_config=dict(weight_dtype="int4_fullrange", group_size=64, scheme="sym",
                                           head_weight_dtype=None)),  # float head, as the other tables
    "nf4_g64": COLUMNS["nf4_g64"],
}
