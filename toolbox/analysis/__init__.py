"""The study's tables and curves, aggregated from the run folders under an experiments folder.

Only each run's ``config.json`` and ``metrics.json`` are read (see ``toolbox.rundir``): a copy of
``experiments/`` without checkpoints is enough, and a run counts once its ``metrics.json`` exists,
so a job still training never shows up as a result.

Runs are grouped into configurations by the flags that change the experiment. Runtime flags and
the seed never split a configuration, and neither do flags a method ignores (the ranks saved with
a featuremap run, the reconstruction target of a plain tucker run): see ``toolbox.rundir.identity.defining_flags``.
Configurations are named as in the original study's table (``featuremap``, ``tucker_x0.5``,
``recomp_both_x0.25``: channel rank over the channels of the distilled map); a label adds the
other flags in which the configurations of a folder differ (``tucker_x0.5 (beta=50)``). Plain
training is named by its role here: ``teacher`` when a run of the folder distilled from it,
``student alone`` when it is the no-teacher baseline of a distillation run (or nothing distils from it).

``expectation_table`` is the "what to expect" view: per configuration, the mean over seeds with its
t-interval, and the paired t-test of its difference to the student alone, seed by seed.

This package is the face the notebooks, ``util.sh`` and the tests import (``from toolbox import
analysis``); each concern lives in its own module:

- ``runs``: run folders -> ``Runs`` (names, families, defining flags, curves);
- ``summary``: a row per configuration, its baselines, the exported summary;
- ``expectations``: t-intervals and paired t-tests against the student alone;
- ``plots``: learning curves and accuracy against Tucker rank;
- ``benchmark``: the CRD-layout benchmark table with the published CIFAR-100 numbers;
- ``layout``: the benchmark table in a data set's published layout (ImageNet);
- ``inspection``: inside the method, for the second notebook: reconstruction error against rank,
  spectra, energy kept, principal angles (imported on its own: it loads torch).

A name is looked up in the module that defines it: to replace one in a test, patch it there
(``toolbox.analysis.summary.summarize``), not here.
"""

from toolbox.analysis.benchmark import (
    BENCHMARK_PAIRS,
    BENCHMARK_ROWS,
    BENCHMARK_STATISTICS,
    CIFAR_SOURCES,
    MISSING,
    PAIR_FLAGS,
    PUBLISHED_CSV,
    PUBLISHED_DATASET,
    TUCKER_FAMILIES,
    _row_order,
    benchmark_markdown,
    benchmark_reports,
    benchmark_table,
    export_benchmark,
    pair_label,
    published_results,
    published_table,
    with_published,
)
from toolbox.analysis.expectations import (
    CONFIDENCE,
    EXPECTATION_COLUMNS,
    PairedTest,
    expectation_markdown,
    expectation_report,
    expectation_table,
    export_expectations,
    paired_t_test,
    t_interval,
)
from toolbox.analysis.layout import (
    BENCHMARK_LAYOUTS,
    IMAGENET_PAIRS,
    IMAGENET_PUBLISHED_CSV,
    BenchmarkLayout,
    layout_reports,
    layout_table,
)
from toolbox.analysis.plots import (
    curves,
    plot_accuracy_vs_rank,
    plot_curves,
    plot_distillation_losses,
    rank_table,
    save_figure,
)
from toolbox.analysis.runs import (
    ADDITIONS,
    BASELINES,
    CURVES,
    METHOD_SPECIFIC,
    NAME_COLUMNS,
    NAMED_FLAGS,
    NOT_FLAG_COLUMNS,
    NOT_FLAGS,
    PENDING_COLUMNS,
    PLAIN_ROLES,
    REFERENCE,
    RUN_STATS,
    SHOWN_FLAGS,
    SUMMARY_NUMBERS,
    SUMMARY_STATS,
    TUCKER_METHODS,
    Runs,
    describe,
    family,
    feature_map_shape,
    flag_columns,
    identity,
    load_runs,
    method_name,
)
from toolbox.analysis.summary import baseline, compact, export_summary, summarize, to_markdown
