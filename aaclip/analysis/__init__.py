"""Analysis and plotting helpers for the notebooks (`from aaclip import analysis`).

The notebooks hold the story; the logic they need lives here, written once, by concern:

- `notebook`: set-up from the parameters cell (`setup`, `Notebook`: config, output paths,
  the notes every table and figure carries, where settings differ from the paper's), the
  key-number summary, table helpers;
- `alignment`: anchors, raw patch scores, image-to-text similarity and temperature (Fig. 1
  top), the text-similarity matrix (Fig. 1 bottom), t-SNE of prompt features (Fig. 2),
  predictions of several models;
- `plots`: figures (legends off the data, colour bars, maps grid);
- `ablations`: configured variants: known-defect switches, the component ablation (Table
  3), data efficiency (Fig. 4);
- `protocol`: the metric protocol's references (exact PRO curve, two wrong AUPRO variants);
- `methods`: every registered method on the same records (notebook 07, Fig. 5).

Nothing here imports a notebook, and nothing trains or scores differently from the package:
training is `aaclip.train`, scoring `aaclip.evaluate`, metrics `aaclip.metrics`, one
experiment `aaclip.experiment.run`.
"""

import warnings

# tqdm.auto (the progress bars of train/evaluate, off in the notebooks) warns inside a kernel
# without ipywidgets; nothing to act on, so it is not shown.
warnings.filterwarnings("ignore", message="IProgress not found")

from aaclip.analysis import ablations, alignment, methods, notebook, plots, protocol  # noqa: E402
from aaclip.analysis.ablations import (  # noqa: E402
    COMPONENT_PERCENT,
    COMPONENTS,
    QUICK_VARIANT_EPOCHS,
    VariantResult,
    VariantRunner,
    ablation_config,
    ablation_table,
    ablation_variants,
    component_config,
    component_jobs,
    component_table,
    components,
    epochs_text,
    has_components,
    published_components,
    run_components,
    run_jobs,
    run_prefix,
    run_shots,
    run_variant,
    shot_jobs,
    shots_grid,
    shots_table,
    switch_jobs,
)
from aaclip.analysis.alignment import (  # noqa: E402
    TEMPERATURES,
    anchor_comparison,
    anchor_cosines,
    image_text_similarity,
    initial_model,
    normal_abnormal_block,
    overlap_coefficient,
    patch_score_samples,
    patch_scores,
    pick_examples,
    predict_test_sets,
    prompt_features,
    score_separation,
    state_separation,
    temperature_errors,
    text_similarity_matrix,
    tsne_embedding,
)
from aaclip.analysis.notebook import (  # noqa: E402
    METRICS_SHOWN,
    QUICK_BANNER,
    QUICK_OVERRIDES,
    SMOKE_BANNER,
    MissingInputsError,
    Notebook,
    class_groups,
    differences_text,
    ensure_synthetic,
    jsonable,
    key_numbers_text,
    mean_rows,
    num,
    paper_differences,
    pct,
    print_key_numbers,
    profile_config,
    read_train_log,
    repo_root,
    require_inputs,
    resolve_path,
    select_targets,
    setup,
    shots_label,
    with_method,
)
from aaclip.analysis.plots import (  # noqa: E402
    heatmaps,
    legend_below,
    legend_right,
    plot_loss,
    qualitative_grid,
    shots_axis_order,
    tsne_panels,
)
from aaclip.analysis.protocol import (  # noqa: E402
    adversarial_aupro_case,
    aupro_variants,
    aupro_wrong_200_thresholds,
    aupro_wrong_last_fpr,
    only_anomalous,
    pro_curve,
)
from aaclip.evaluate import eval_sets  # noqa: E402

__all__ = [
    "QUICK_VARIANT_EPOCHS", "COMPONENT_PERCENT", "COMPONENTS", "METRICS_SHOWN", "QUICK_BANNER",
    "QUICK_OVERRIDES",
    "SMOKE_BANNER", "TEMPERATURES", "MissingInputsError", "Notebook", "VariantResult",
    "VariantRunner", "ablation_config", "ablation_table", "ablation_variants", "ablations",
    "adversarial_aupro_case", "alignment", "anchor_comparison", "anchor_cosines",
    "aupro_variants", "aupro_wrong_200_thresholds", "aupro_wrong_last_fpr", "class_groups",
    "component_config", "component_jobs", "component_table", "components", "differences_text",
    "ensure_synthetic", "has_components", "run_prefix",
    "epochs_text", "eval_sets", "heatmaps", "image_text_similarity", "initial_model",
    "jsonable", "key_numbers_text", "legend_below", "legend_right", "mean_rows", "methods",
    "normal_abnormal_block", "notebook", "num", "only_anomalous", "overlap_coefficient",
    "paper_differences", "patch_score_samples", "patch_scores", "pct", "pick_examples",
    "plot_loss", "plots", "predict_test_sets", "print_key_numbers", "pro_curve",
    "profile_config", "prompt_features", "protocol", "published_components",
    "qualitative_grid", "read_train_log", "repo_root", "require_inputs", "resolve_path",
    "run_components", "run_jobs", "run_shots", "run_variant", "score_separation", "select_targets",
    "setup", "shots_axis_order", "shot_jobs", "shots_grid", "shots_label", "shots_table",
    "state_separation", "switch_jobs", "temperature_errors", "text_similarity_matrix",
    "tsne_embedding", "tsne_panels", "with_method",
]  # fmt: skip
