"""Fine-tuning and the data-efficiency sweep (ConVIRT sec. 4, Table 1): inits x label fractions x seeds.

rows -> labels (NaN = missing) -> split (column or patient-level) -> images decoded once per preprocessing (uint8)
-> for each init: [linear] features once, one L-BFGS head per (fraction, seed);
                  [full] tower + head trained with the paper's augmentations, early-stopped on val ->
test metrics with bootstrap 95% intervals -> table (init x fraction, mean +- sd) + plot + classifiers + the
test predictions each classifier made.

The same (fraction, seed) picks the same training rows for every init, so inits compare like for like. Each
init decodes images with its own tower's preprocessing (a run's window travels with it), the classifier it
becomes carries that preprocessing, and so its export sees the pixels fine-tuning saw.

  inits.py         what each --init builds (a run's tower, a preset's, `random`), and its preprocessing
  data.py          rows -> labels, validation, one row per image, the split; images decoded per preprocessing
  linear.py        the frozen tower's features and the L-BFGS head (torch/probe.py) as a classifier
  full.py          the whole tower fine-tuned, early-stopped on validation
  results.py       test metrics with intervals, the table (json, csv), predictions, the plot
  sweep.py         `convirt finetune`: the classification sweep
  segmentation.py  `convirt finetune --task segmentation`: RAD-DINO's patch-token probe, the same sweep
"""
