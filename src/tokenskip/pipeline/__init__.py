"""``tokenskip run RECIPE``: the whole TokenSkip pipeline from one YAML recipe, resumably.

Stages, in order (:mod:`tokenskip.stages`): ``generate → compress → build_sft → train → evaluate →
report``, preceded in the CPU lab's recipes by ``lab_data → warmup → merge`` (problems, a warm-up
fine-tune on their worked solutions, and the merged target model). Each writes into
``<run_dir>/<name>/<stage>/``; ``manifest.json`` beside them records, per stage, the resolved settings,
a fingerprint of settings + inputs (data file hashes, upstream fingerprints), timings and status.

* A stage whose fingerprint is unchanged and whose status is ``done`` is skipped.
* A changed stage reruns, and so does everything downstream, because downstream fingerprints
  include it. compress, build_sft and train start from an empty folder; generate and evaluate keep
  the rows whose own settings fingerprint still matches (a larger ``limit`` only adds rows; a changed
  method reruns only that method's γ runs).
* A killed run resumes: a stage left ``running`` with the same fingerprint keeps its folder, and
  the stage's own resumability (row files, trainer checkpoints) continues where it stopped.

With ``lab_data`` enabled, the ``data`` of generate/compress/build_sft defaults to its
``train.jsonl`` and every evaluation benchmark's to its ``test.jsonl``; with ``merge`` enabled, the
merged folder is the ``model`` of every stage after it (the top-level ``model`` is the base of the
warm-up). When a lab stage runs, changed generate/evaluate stages start from an empty folder (their
rows came from another target model).

Recipe layout (see ``recipes/``)::

    name: demo                      # run folder name
    run_dir: runs                   # parent folder (default: runs)
    model: smollm2-135m-instruct    # default `model` of every stage
    threads: 2                      # default `threads` of every stage
    dtype / device / seed / benchmark / backend / prompt_style / system_prompt  # also copied into every
    cot_format / enable_thinking    # stage with such a field (think models: docs/usage.md)
    stages:
      lab_data:  {...LabDataConfig fields}             # CPU lab only
      warmup:    {...WarmupConfig fields}              # CPU lab only
      merge:     {...MergeConfig fields}               # CPU lab only
      generate:  {enabled: false, ...GenerationConfig fields}
      compress:  {...CompressConfig fields}
      build_sft: {...SFTDataConfig fields}
      train:     {...TrainConfig fields}
      evaluate:  {...EvaluateConfig fields shared by all runs,
                  benchmarks: [{benchmark, data, limit, ...}], methods: [{method, ratios, ...}]}
      report:    {...ReportConfig fields}

Unknown keys (top level or in any stage section) are errors at plan time, so ``--dry-run`` catches
typos; so is a data file, model or adapter that neither exists nor is made by an earlier stage.
Settings are fingerprinted as written (defaults that depend on the disk, such as build-sft's ratios,
are resolved only when the stage runs), so an unchanged recipe reruns nothing.

Paths between stages (``out``, ``predictions``, ``compressed``, ``data`` of train, ``adapter``) are
filled in by the pipeline; a recipe may still set them to use outside inputs.
"""
