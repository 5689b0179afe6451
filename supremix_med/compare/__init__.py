"""Compare pre-training methods on one bundle: every row x seed, mean ± sd, paired differences with intervals.

Command line::

    python -m supremix_med.compare --config_file bundles/airfoil/train.json \\
        [--config_file overlay.json ...] --output_dir DIR [--seeds 0,1,2] \\
        [--methods vanilla,supcon,rnc,conr,mixsupcon,supremix] [--variant NAME=METHOD[:KEY=VALUE,...] ...] \\
        [--overwrite] [--shot_metrics mae,gm] [--digits 3] [--confidence 0.95] [--bootstrap 2000] \\
        [--bootstrap_seed 0] [any --key value override ...]

**Rows** (:class:`~supremix_med.compare.runs.Row`). A row is a name, the ``--method`` it runs and bundle
overrides of its own. Each of ``--methods`` is a plain row named after its method. ``--variant`` (repeatable)
adds a named row that runs a method with other settings, ``NAME=METHOD[:KEY=VALUE,KEY=VALUE,...]``; keys are
bundle override keys without the dashes, values are passed on unparsed, and the row's overrides come after the
comparison's own (the row wins where both set a key)::

    --methods vanilla,supremix_probe,supremix_ft,supcon \\
    --variant supremix_probe=supremix:linear_probe=True \\
    --variant supremix_ft=supremix:linear_probe=False \\
    --variant supremix_t0.1_w0.5=supremix:loss_kwargs#supremix#temperature=0.1,window=0.5 \\
    --variant supremix_eq6=supremix:loss_kwargs#supremix#reduction=label_balanced

The override list splits at a comma followed by the next ``key=``, so a value may hold commas
(``loss_kwargs#supremix#beta=[1,4]``). A variant's name names its folder (letters, digits, ``. _ + -``) and
may not be a method's name; naming it in ``--methods`` places its row there, otherwise variants follow the
``--methods`` rows in the order given. Every row is paired against the plain ``vanilla`` row.

**The grid** (:mod:`~supremix_med.compare.runs`). Every row runs once with every seed (a *cell*):
``python -m monai.bundle run --config_file "[...]" --method M --output_dir DIR/<row>/seed<S> --seed S`` plus
the same overrides (the same budget for all), then the row's own, seed by seed, each in a subprocess streamed
to the console and to ``DIR/<row>/seed<S>/run.log``; ``DIR/<row>/seed<S>/cell.json`` records the row, method,
seed and overrides asked for. A cell whose ``metrics.json`` exists is reused, not run again (an interrupted
comparison resumes, rows added later run alone), unless ``--overwrite`` or its ``cell.json`` records other
settings than those asked now (a changed budget or variant definition: the cell runs again); a failing cell
is reported with its log, the others still run, and the command exits with status 1 at the end.

**The paired design.** Cells with the same seed are a matched replicate: each bundle's ``initialize`` calls
``monai.utils.set_determinism(seed=@seed)`` (Python, NumPy and torch generators; deterministic cuDNN), so with
one seed every row

- sees the same train / validation / test split (bundles that draw the split from ``@seed``, such as
  ``airfoil``'s ``load_table(seed=@seed)``, change it with the seed, so the spread over seeds includes the
  split's; the image bundles read a fixed split from their manifest);
- starts from the same weights: the whole network (encoder, projection head, regressor) is built before any
  method-specific random draw;
- fine-tunes on the same batch order: the shared recipe gives the pre-training and fine-tuning loaders their own
  ``generator`` seeded with ``@seed``, so the order does not depend on how much of torch's global generator a
  method's pre-training used (with or without loader worker processes).

Pre-training's own random draws (mixing coefficients, augmented views) are part of what a method is. GPU
kernels may still be non-deterministic, so equal seeds give equal starts, not bit-identical runs.

**The report** (:mod:`~supremix_med.compare.report`, :mod:`~supremix_med.compare.stats`):
``DIR/comparison.md``, ``DIR/comparison.json`` and ``DIR/comparison.png``. For every metric column (MAE, MSE,
GM, Pearson and Spearman on the whole test set; ``--shot_metrics`` on the many / medium / few-shot samples;
the ordinality score per phase where runs report one), per row:

- the mean and standard deviation over seeds, and the training protocol (``metrics["protocol"]`` when the run
  states it, else implied by method and ``linear_probe``); the settings line lists each variant's arguments;
- the paired difference against vanilla (row - vanilla on the same seed) with a ``--confidence``
  t-interval over the seeds (``scipy.stats.t``, S - 1 degrees of freedom; needs 2 seeds);
- within each seed, a paired bootstrap interval over the test samples: the cells' ``predictions.csv`` are
  paired by sample id, ``--bootstrap`` resamples (default 2000) are drawn with replacement, resample b of
  seed S and row group g from ``numpy.random.default_rng([bootstrap_seed, S, g, b])`` (the same resamples for
  every row), and the interval is the percentile interval of the resampled differences. Shot-group
  intervals resample the group's samples, read from a ``shot`` column of the predictions.

The figure has one panel per column: every seed's value (a marker per seed) and the mean (a bar) per row.
"""

from supremix_med.compare.cli import main
from supremix_med.compare.report import (
    DISPLAY_NAMES, OVERALL_COLUMNS, REFERENCE, Column, Comparison, bootstrap_differences, build_comparison,
    cell_values, check_shot_metrics, comparison_markdown, display_name, read_predictions, report_columns,
    run_protocol, seed_differences, summary_table, write_comparison,
)
from supremix_med.compare.runs import (
    BUNDLE_LAUNCHER, RESERVED_OVERRIDES, CellRun, Row, bundle_command, bundle_methods, cell_dir, compare_methods,
    comparison_rows, override_pairs, parse_variant, run_bundle, run_cell,
)
from supremix_med.compare.stats import Interval, paired_bootstrap, resampled_metric, t_interval

__all__ = [
    "main",
    "CellRun", "Row", "BUNDLE_LAUNCHER", "RESERVED_OVERRIDES", "bundle_methods", "override_pairs", "parse_variant",
    "comparison_rows", "bundle_command", "cell_dir", "run_bundle", "run_cell", "compare_methods",
    "Column", "Comparison", "REFERENCE", "DISPLAY_NAMES", "OVERALL_COLUMNS", "display_name", "run_protocol",
    "check_shot_metrics", "report_columns", "cell_values", "summary_table", "seed_differences", "read_predictions",
    "bootstrap_differences", "build_comparison", "comparison_markdown", "write_comparison",
    "Interval", "t_interval", "paired_bootstrap", "resampled_metric",
]
